//! The normalizer against hostile sources. Every layer it accepts is unpacked by an extractor
//! written here (which trusts nothing the normalizer decided), and every symlink of the unpacked
//! tree is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`: nothing may land or lead
//! outside the prefix.

use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use proptest::prelude::*;
use tar::{EntryType, Header};

use super::*;
use crate::tree::against_the_kernel::{location, open_in_root};
use crate::tree::TreePath;

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    File(Vec<u8>, u32),
    Dir,
    Symlink(String),
    Hardlink(String),
    Fifo,
}

/// Writes raw headers, so that unsafe names reach the normalizer as an attacker would send them.
pub(crate) fn raw_tar(entries: &[(String, Kind)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind) in entries {
        let mut h = Header::new_gnu();
        let (ty, data, link): (EntryType, &[u8], Option<&str>) = match kind {
            Kind::File(d, _) => (EntryType::Regular, d, None),
            Kind::Dir => (EntryType::Directory, &[], None),
            Kind::Symlink(t) => (EntryType::Symlink, &[], Some(t)),
            Kind::Hardlink(t) => (EntryType::Link, &[], Some(t)),
            Kind::Fifo => (EntryType::Fifo, &[], None),
        };
        h.set_entry_type(ty);
        h.set_mode(if let Kind::File(_, m) = kind { m & 0o7777 } else { 0o755 });
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        let name = &name.as_bytes()[..name.len().min(99)];
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            let link = &link.as_bytes()[..link.len().min(99)];
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn settings() -> LayerSettings {
    LayerSettings {
        epoch: 1_000,
        compressor: crate::compress::Compressor::gzip(1),
        parallelism: crate::compress::Parallelism::threads(1),
        max_unpacked: 1 << 20,
        cache: None,
        reuse_layers: true,
    }
}

fn unpack(strip: u32, prefix: &str, whiteouts: bool) -> Unpack {
    Unpack { strip_components: strip, prefix: prefix.into(), exclude: vec![], whiteouts, skip_devices: false }
}

/// Normalizes `data`; the layer's uncompressed tar, or the error.
fn normalize(data: Vec<u8>, unpack: &Unpack) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (record, _) = normalize_tarball(&store, io::Cursor::new(data), "test", unpack, &settings())?;
    let blob = std::fs::File::open(store.sha256_path(&record.digest.0)).unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(blob).read_to_end(&mut tar).unwrap();
    Ok(tar)
}

fn member(bytes: &[u8]) -> Result<TreePath, String> {
    TreePath::from_member(bytes).map_err(|e| format!("`{}`: {e}", String::from_utf8_lossy(bytes)))
}

/// The independent extractor: writes `layer` into `root` the way a careful runtime would, and
/// fails on anything the normalizer must never emit (a path twice, a missing or non-directory
/// parent, an entry outside the prefix, a hard link to anything but an earlier file, metadata
/// that is not normalized, a whiteout the recipe did not allow). Returns the symlinks.
fn extract(layer: &[u8], root: &Path, prefix: &TreePath, whiteouts: bool) -> Result<Vec<TreePath>, String> {
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let h = entry.header().clone();
        let path = member(&entry.path_bytes())?;
        let on_disk = root.join(path.as_path());
        let ty = h.entry_type();
        if path.is_root() || h.uid().unwrap() != 0 || h.gid().unwrap() != 0 || h.mtime().unwrap() > settings().epoch {
            return Err(format!("{path}: root entry or metadata not normalized"));
        }
        let inside = path.starts_with(prefix) && path != *prefix;
        if !(inside || ty == EntryType::Directory && prefix.starts_with(&path)) {
            return Err(format!("{path} is outside the prefix {prefix}"));
        }
        if path.components().any(|c| c.starts_with(b".wh."))
            && !(whiteouts && ty == EntryType::Regular && h.size().unwrap() == 0)
        {
            return Err(format!("{path}: a whiteout the recipe did not allow, or not an empty file"));
        }
        let parent = root.join(path.parent().unwrap().as_path());
        match std::fs::symlink_metadata(&parent) {
            Ok(m) if m.file_type().is_dir() => {}
            other => return Err(format!("{path}: its parent is not a directory written before it: {other:?}")),
        }
        if std::fs::symlink_metadata(&on_disk).is_ok() {
            return Err(format!("{path} is listed twice"));
        }
        match ty {
            EntryType::Directory => std::fs::create_dir(&on_disk).map_err(|e| e.to_string())?,
            EntryType::Regular => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
                std::fs::write(&on_disk, data).map_err(|e| e.to_string())?;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or("symlink without target")?.into_owned();
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &on_disk)
                    .map_err(|e| e.to_string())?;
                links.push(path);
            }
            EntryType::Link => {
                let target = member(&entry.link_name_bytes().ok_or("hard link without target")?)?;
                let is_file =
                    std::fs::symlink_metadata(root.join(target.as_path())).is_ok_and(|m| m.file_type().is_file());
                if !target.starts_with(prefix) || !is_file {
                    return Err(format!("{path}: hard link to {target}, not an earlier file inside the prefix"));
                }
                std::fs::hard_link(root.join(target.as_path()), &on_disk).map_err(|e| e.to_string())?;
            }
            other => return Err(format!("{path}: entry type {other:?} in a layer")),
        }
    }
    Ok(links)
}

/// Where the kernel takes the symlink at `link`, inside `root`. A missing component is made a
/// directory first (a lower layer or a later one could create it), so dangling links are
/// followed as far as they could ever lead. `None`: the kernel follows it nowhere (a loop, a
/// file in the way).
fn kernel_target(root: &std::fs::File, root_path: &Path, link: &TreePath, depth: usize) -> Option<TreePath> {
    let target = std::fs::read_link(root_path.join(link.as_path())).unwrap();
    let target = target.as_os_str().as_bytes();
    let full: Vec<u8> = if target.starts_with(b"/") {
        target.to_vec()
    } else {
        [link.parent().unwrap().as_bytes(), b"/", target].concat()
    };
    let parts: Vec<&[u8]> = full.split(|b| *b == b'/').collect();
    let joined = |n: usize| {
        let p = parts[..n].join(&b'/');
        if p.is_empty() {
            b"/".to_vec()
        } else {
            p
        }
    };
    for _ in 0..=parts.len() * 2 {
        match open_in_root(root, &full) {
            Ok(fd) => return location(&fd, root_path),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && depth < crate::tree::MAX_LINKS => {}
            Err(_) => return None,
        }
        // Make the first missing component a directory, where the kernel says it would be; if
        // it is a dangling symlink, make its own target first.
        let missing = (1..=parts.len()).find(|n| open_in_root(root, &joined(*n)).is_err())?;
        let parent = location(&open_in_root(root, &joined(missing - 1)).ok()?, root_path)?;
        let name = parts[missing - 1];
        let at = root_path.join(parent.as_path()).join(std::ffi::OsStr::from_bytes(name));
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            kernel_target(root, root_path, &parent.join(name), depth + 1)?;
        } else {
            std::fs::create_dir(&at).ok()?;
        }
    }
    None
}

/// Unpacks an accepted layer and checks it with the extractor and the kernel.
fn check_layer(layer: &[u8], prefix: &str, whiteouts: bool) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let root_path = tmp.path().canonicalize().unwrap();
    let prefix = TreePath::from_member(prefix.as_bytes()).unwrap();
    let links = extract(layer, &root_path, &prefix, whiteouts)?;
    let root = std::fs::File::open(&root_path).unwrap();
    for link in &links {
        if let Some(at) = kernel_target(&root, &root_path, link, 0) {
            if !at.starts_with(&prefix) {
                return Err(format!("the symlink {link} leads to {at}, outside {prefix}"));
            }
        }
    }
    Ok(())
}

fn refused(result: Result<Vec<u8>>, needle: &str) {
    match result {
        Err(e @ Error::UnsafeEntry { .. }) => assert!(e.to_string().contains(needle), "`{needle}` not in: {e}"),
        Err(e) => panic!("refused for another reason than `{needle}`: {e}"),
        Ok(_) => panic!("accepted; expected a refusal with `{needle}`"),
    }
}

/// Refused as a whole archive (no member named), with `needle` in the message.
fn bad_archive(result: Result<Vec<u8>>, needle: &str) {
    match result {
        Err(e @ Error::BadArchive { .. }) => assert!(e.to_string().contains(needle), "`{needle}` not in: {e}"),
        Err(e) => panic!("refused for another reason than `{needle}`: {e}"),
        Ok(_) => panic!("accepted; expected a refusal with `{needle}`"),
    }
}

fn file(name: &str) -> (String, Kind) {
    (name.into(), Kind::File(b"x".to_vec(), 0o644))
}

fn link(name: &str, target: &str) -> (String, Kind) {
    (name.into(), Kind::Symlink(target.into()))
}

fn hard(name: &str, target: &str) -> (String, Kind) {
    (name.into(), Kind::Hardlink(target.into()))
}

#[test]
fn chained_links_that_climb_out_together_are_refused() {
    // Issue #11: each link alone stays inside; `t` through `s` leaves the prefix.
    let entries = [link("p/a/b/s", "../.."), link("p/t", "a/b/s/../../.."), file("p/t/etc/x")];
    refused(normalize(raw_tar(&entries), &unpack(1, "opt/app", false)), "through the symlink /opt/app/t");
    let entries = [link("p/a/b/s", "../.."), link("p/t", "a/b/s/../../..")];
    refused(normalize(raw_tar(&entries), &unpack(1, "opt/app", false)), "outside /opt/app");
}

#[test]
fn a_later_entry_that_redirects_an_earlier_link_is_refused() {
    let entries = [link("p/x", "d/e"), link("p/d", "/etc")];
    refused(normalize(raw_tar(&entries), &unpack(1, "opt/app", false)), "p/x");
}

#[test]
fn absolute_links_are_valid_under_the_root_and_refused_where_they_leave_the_prefix() {
    let entries = [
        ("lib/x86_64-linux-gnu/".to_string(), Kind::Dir),
        file("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        link("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        link("etc/mtab", "/proc/self/mounts"),
    ];
    let layer = normalize(raw_tar(&entries), &unpack(0, "", false)).unwrap();
    check_layer(&layer, "", false).unwrap();
    refused(normalize(raw_tar(&entries), &unpack(0, "opt/root", false)), "outside /opt/root");
    let inside = [file("p/lib/x"), link("p/bin/x", "/opt/app/lib/x")];
    check_layer(&normalize(raw_tar(&inside), &unpack(1, "opt/app", false)).unwrap(), "opt/app", false).unwrap();
}

#[test]
fn whiteouts_need_the_recipe_to_opt_in_and_stay_empty_files() {
    let entries = [("etc/.wh.passwd".to_string(), Kind::File(b"evil".to_vec(), 0o644)), file("dir/.wh..wh..opq")];
    refused(normalize(raw_tar(&entries), &unpack(0, "", false)), "whiteouts = true");
    let layer = normalize(raw_tar(&entries), &unpack(0, "", true)).unwrap();
    check_layer(&layer, "", true).unwrap();
    let mut archive = tar::Archive::new(&layer[..]);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        if e.path_bytes().ends_with(b"passwd") {
            assert_eq!(e.header().size().unwrap(), 0, "a whiteout carries no content");
        }
    }
    refused(normalize(raw_tar(&[(".wh.d/".into(), Kind::Dir)]), &unpack(0, "", true)), "regular file");
    refused(normalize(raw_tar(&[link(".wh.l", "x")]), &unpack(0, "", true)), "regular file");
}

#[test]
fn trees_no_runtime_unpacks_are_refused() {
    let u = unpack(0, "app", false);
    refused(normalize(raw_tar(&[("d/".into(), Kind::Dir), hard("h", "d")]), &u), "hard link to /app/d");
    refused(normalize(raw_tar(&[hard("h", "h")]), &u), "hard link");
    refused(normalize(raw_tar(&[file("f"), file("f/g")]), &u), "not a directory");
    refused(normalize(raw_tar(&[file("f"), ("f/".into(), Kind::Dir)]), &u), "already a file");
    refused(normalize(raw_tar(&[file("f"), file("f")]), &u), "already a file");
    refused(normalize(raw_tar(&[link("l", "."), file("l/x")]), &u), "through the symlink");
    refused(normalize(raw_tar(&[link("a", "b"), link("b", "a")]), &u), "more than 40 links");
    refused(normalize(raw_tar(&[hard("h", "../etc/passwd")]), &u), "`..`");
    // Names past Linux's limits, in GNU long-name entries.
    let mut long = tar::Builder::new(Vec::new());
    long.append_data(&mut header(EntryType::Regular, 0o644, 0, 0), "n".repeat(256), io::empty()).unwrap();
    refused(normalize(long.into_inner().unwrap(), &u), "longer than 255 bytes");
    let mut long = tar::Builder::new(Vec::new());
    long.append_link(&mut header(EntryType::Symlink, 0o777, 0, 0), "l", "a/".repeat(2048)).unwrap();
    bad_archive(normalize(long.into_inner().unwrap(), &u), "link name (`K`) header of 4097 bytes, more than the 4096");
    let mut long = tar::Builder::new(Vec::new());
    long.append_data(&mut header(EntryType::Regular, 0o644, 0, 0), "a".repeat(4095), io::empty()).unwrap();
    refused(normalize(long.into_inner().unwrap(), &u), "a name longer than 255 bytes");
    let mut long = tar::Builder::new(Vec::new());
    // Within the 4096 bytes a GNU long name may have, past them under the prefix.
    let deep = ["d/"; 2046].concat() + "f";
    long.append_data(&mut header(EntryType::Regular, 0o644, 0, 0), deep, io::empty()).unwrap();
    refused(normalize(long.into_inner().unwrap(), &u), "4096 bytes or more in the image");
    let w = Unpack { whiteouts: true, ..u };
    refused(normalize(raw_tar(&[file(".wh.x"), hard("h", ".wh.x")]), &w), "whiteout /app/.wh.x");
}

/// Deep names are cheap to send and add all their parents to the model: a few KiB of
/// compressed input may not make it hold gigabytes.
#[test]
fn an_archive_of_deep_names_cannot_fill_the_memory() {
    let mut tar = tar::Builder::new(Vec::new());
    let deep = ["d/"; 1900].concat();
    for i in 0..200 {
        let name = format!("{i}/{deep}f");
        tar.append_data(&mut header(EntryType::Regular, 0o644, 0, 0), name, io::empty()).unwrap();
    }
    let data = gzip(&tar.into_inner().unwrap());
    assert!(data.len() < 200 << 10, "{} bytes", data.len());
    refused(normalize(data, &unpack(0, "", false)), "more than imgbuild models");
}

#[test]
fn repeated_directories_are_merged_and_missing_parents_written_first() {
    let entries = [file("p/a/b/f"), ("p/a/".into(), Kind::Dir), ("p/a/".into(), Kind::Dir), hard("p/a/h", "p/a/b/f")];
    let layer = normalize(raw_tar(&entries), &unpack(1, "opt/app", false)).unwrap();
    check_layer(&layer, "opt/app", false).unwrap();
    let names: Vec<String> = tar::Archive::new(&layer[..])
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect();
    assert_eq!(names, ["opt/", "opt/app/", "opt/app/a/", "opt/app/a/b/", "opt/app/a/b/f", "opt/app/a/h"]);
}

#[test]
fn names_with_control_characters_are_printed_escaped() {
    let err = normalize(raw_tar(&[link("x\x1b[2J\ny", "/etc")]), &unpack(0, "app", false)).unwrap_err().to_string();
    assert!(err.contains("x\\u{1b}[2J\\ny") && !err.contains('\x1b') && !err.contains('\n'), "{err}");
}

#[test]
fn empty_sources_and_sources_without_entries_are_errors() {
    let err = normalize(Vec::new(), &unpack(0, "", false)).unwrap_err().to_string();
    assert!(err.contains("empty (0 bytes)"), "{err}");
    let err = normalize(vec![0u8; 10240], &unpack(0, "", false)).unwrap_err().to_string();
    assert!(err.contains("no entries"), "{err}");
    let err = normalize(raw_tar(&[("top/".into(), Kind::Dir)]), &unpack(1, "", false)).unwrap_err().to_string();
    assert!(err.contains("none of its 1 entries is left"), "{err}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, data).unwrap();
    gz.finish().unwrap()
}

#[test]
fn a_gzip_trailer_that_does_not_match_is_an_error() {
    let tar = raw_tar(&[file("a"), file("b")]);
    let good = gzip(&tar);
    assert!(normalize(good.clone(), &unpack(0, "app", false)).is_ok());
    let n = good.len();
    for (what, at) in [("CRC-32", n - 8), ("length", n - 2)] {
        let mut bad = good.clone();
        bad[at] ^= 0x55;
        let err = normalize(bad, &unpack(0, "app", false)).unwrap_err();
        assert!(matches!(err, Error::BadArchive { .. }), "a wrong {what} must fail: {err}");
    }
    // Bytes after the tar's end marker are read too: a truncated trailer fails.
    let err = normalize(good[..n - 4].to_vec(), &unpack(0, "app", false)).unwrap_err();
    assert!(matches!(err, Error::BadArchive { .. }), "{err}");
}

/// Compresses with the reference command-line tool (`xz`, `bzip2`, `zstd`).
fn compress_with(tool: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), data).unwrap();
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(input.path())
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed by this test (.ci/install installs it): {e}"));
    assert!(out.status.success(), "{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn xz_bzip2_and_zstd_give_the_same_layer_as_gzip_and_their_checks_are_checked() {
    let tar = raw_tar(&[file("a"), ("d/big".into(), Kind::File(vec![7u8; 300_000], 0o755)), link("l", "d/big")]);
    let u = unpack(0, "app", false);
    let expected = normalize(gzip(&tar), &u).unwrap();
    let formats: [(&str, &[&str]); 4] = [
        ("xz", &["-c", "-T1"]),
        ("bzip2", &["-c"]),
        ("zstd", &["-c", "-q", "--check"]),
        ("zstd", &["-c", "-q", "--no-check"]),
    ];
    for (tool, args) in formats {
        let compressed = compress_with(tool, args, &tar);
        assert_eq!(normalize(compressed.clone(), &u).unwrap(), expected, "{tool} {args:?}");
        // Two streams one after the other are one file, as their tools read them.
        let twice = [compress_with(tool, args, &tar[..512 * 2]), compress_with(tool, args, &tar[512 * 2..])].concat();
        assert_eq!(normalize(twice, &u).unwrap(), expected, "{tool} {args:?} in two streams");
        if args.contains(&"--no-check") {
            continue; // nothing to check against: whatever it decodes to is what the pin says
        }
        // A flipped byte in the data or in the integrity fields at the end: an error, not a layer.
        for at in [compressed.len() / 2, compressed.len() - 6, compressed.len() - 2] {
            let mut bad = compressed.clone();
            bad[at] ^= 0x20;
            assert!(normalize(bad, &u).is_err(), "{tool}: a file corrupt at byte {at} was accepted");
        }
    }
}

#[test]
fn a_decompression_bomb_stops_at_the_limit() {
    let tar = raw_tar(&[("big".into(), Kind::File(vec![0u8; 3 << 20], 0o644))]);
    for (tool, args) in [("xz", &["-c"][..]), ("zstd", &["-c", "-q"][..]), ("bzip2", &["-c"][..])] {
        let err = normalize(compress_with(tool, args, &tar), &unpack(0, "", false)).unwrap_err();
        assert!(err.to_string().contains("decompression bomb"), "{tool}: {err}");
    }
}

/// If the normalizer accepts `entries`, the layer passes [`check_layer`]; if it refuses them,
/// the message shows no control or reordering character of the input.
fn accepted_layers_are_safe(entries: &[(String, Kind)], u: &Unpack) -> Result<(), String> {
    match normalize(raw_tar(entries), u) {
        Ok(layer) => check_layer(&layer, &u.prefix, u.whiteouts),
        Err(e) if e.to_string().chars().any(crate::error::is_unsafe_char) => Err(format!("unescaped: {e:?}")),
        Err(_) => Ok(()),
    }
}

/// Path parts that find the edge cases: few names (so paths collide and links chain), parent
/// references, dots, empty parts, whiteouts.
fn part() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop_oneof![Just("a"), Just("b"), Just("c"), Just("n1"), Just("n2")].prop_map(String::from),
        2 => Just("..".to_string()),
        1 => Just(".".to_string()),
        1 => Just("".to_string()),
        1 => prop_oneof![Just(".wh.a"), Just(".wh..wh..opq"), Just("\u{1b}[2J\n\u{202e}")].prop_map(String::from),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::bool::weighted(0.15), prop::collection::vec(part(), 1..5))
        .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
}

/// Member names: mostly plain, sometimes hostile (the targets carry most of the hostility, so
/// that many archives get past the names and their links are put to the test).
fn name() -> impl Strategy<Value = String> {
    let plain = prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..4).prop_map(|p| p.join("/"));
    prop_oneof![12 => plain, 1 => path()]
}

/// Any entry: hostile names, targets and types.
fn entry() -> impl Strategy<Value = (String, Kind)> {
    let kind = prop_oneof![
        4 => (prop::collection::vec(any::<u8>(), 0..8), any::<u32>()).prop_map(|(d, m)| Kind::File(d, m)),
        3 => Just(Kind::Dir),
        8 => path().prop_map(Kind::Symlink),
        2 => name().prop_map(Kind::Hardlink),
        1 => path().prop_map(Kind::Hardlink),
        1 => Just(Kind::Fifo),
    ];
    own_names(kind)
}

/// Directories, files and symlinks with hostile targets: the archives that test the links.
fn link_entry() -> impl Strategy<Value = (String, Kind)> {
    let kind = prop_oneof![
        2 => Just(Kind::File(b"x".to_vec(), 0o644)),
        2 => Just(Kind::Dir),
        6 => path().prop_map(Kind::Symlink),
    ];
    own_names(kind)
}

/// Files and links often get a name of their own, so that fewer archives collide.
fn own_names(kind: impl Strategy<Value = Kind>) -> impl Strategy<Value = (String, Kind)> {
    (name(), kind, any::<bool>(), 0u8..4).prop_map(|(name, kind, own, n)| {
        let name = if own && !matches!(kind, Kind::Dir) { format!("{name}/n{n}") } else { name };
        (name, kind)
    })
}

fn prefix() -> impl Strategy<Value = String> {
    prop_oneof![Just(""), Just("a"), Just("opt/app"), Just("a/b")].prop_map(String::from)
}

/// A valid source by construction: `top/` then files, directories (some listed twice, some
/// never), symlinks to earlier entries by relative, absolute and chained paths, hard links.
fn valid_archive() -> impl Strategy<Value = (Vec<(String, Kind)>, String)> {
    let dir = prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 0..3);
    let item = (dir, 0u8..5, any::<prop::sample::Index>(), any::<bool>());
    (prop::collection::vec(item, 1..16), prefix()).prop_map(|(items, prefix)| {
        let mut entries: Vec<(String, Kind)> = vec![("top/".into(), Kind::Dir)];
        let mut targets: Vec<String> = Vec::new(); // paths inside the unpack root
        let mut files: Vec<String> = Vec::new();
        for (i, (dir, what, pick, absolute)) in items.into_iter().enumerate() {
            let dir = dir.join("/");
            let at = |name: String| if dir.is_empty() { name } else { format!("{dir}/{name}") };
            match what {
                0 if !targets.is_empty() || !files.is_empty() => {
                    let target = pick.get(if targets.is_empty() { &files } else { &targets }).clone();
                    let up = "../".repeat(dir.split('/').filter(|p| !p.is_empty()).count());
                    let text = if absolute {
                        format!("/{}{target}", if prefix.is_empty() { String::new() } else { format!("{prefix}/") })
                    } else {
                        format!("{up}{target}")
                    };
                    let name = at(format!("l{i}"));
                    entries.push((format!("top/{name}"), Kind::Symlink(text)));
                    targets.push(name);
                }
                1 if !files.is_empty() => {
                    let target = pick.get(&files).clone();
                    entries.push((format!("top/{}", at(format!("h{i}"))), Kind::Hardlink(format!("top/{target}"))));
                }
                2 if !dir.is_empty() => {
                    entries.push((format!("top/{dir}/"), Kind::Dir));
                    targets.push(dir.clone());
                }
                _ => {
                    let name = at(format!("f{i}"));
                    entries
                        .push((format!("top/{name}"), Kind::File(vec![i as u8; i], 0o644 | ((i as u32 % 2) * 0o111))));
                    files.push(name.clone());
                    targets.push(name);
                }
            }
        }
        (entries, prefix)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the archive holds, the normalizer returns an error or a layer that unpacks
    /// cleanly, lands inside the prefix and whose every symlink the kernel resolves inside it.
    #[test]
    fn every_accepted_layer_unpacks_inside_its_prefix(
        entries in prop::collection::vec(entry(), 1..14),
        strip in 0u32..2,
        prefix in prefix(),
        whiteouts in any::<bool>(),
        skip_devices in any::<bool>(),
        exclude in prop::collection::vec(prop_oneof![Just("b"), Just("a/c"), Just("*/n1")], 0..2),
    ) {
        let exclude = exclude.into_iter().map(String::from).collect();
        let u = Unpack { skip_devices, exclude, ..unpack(strip, &prefix, whiteouts) };
        if let Err(e) = accepted_layers_are_safe(&entries, &u) {
            prop_assert!(false, "{e}\nentries: {entries:?}");
        }
    }

    /// The same for trees of directories, files and chained symlinks with hostile targets.
    #[test]
    fn every_accepted_tree_of_links_stays_inside_its_prefix(
        entries in prop::collection::vec(link_entry(), 1..12),
        strip in 0u32..2,
        prefix in prefix(),
    ) {
        if let Err(e) = accepted_layers_are_safe(&entries, &unpack(strip, &prefix, false)) {
            prop_assert!(false, "{e}\nentries: {entries:?}");
        }
    }

    /// The opposite mistake: a valid tree (deep relative links, absolute links into the
    /// prefix, chained links, hard links, repeated and implicit directories) is accepted.
    #[test]
    fn valid_trees_are_accepted((entries, prefix) in valid_archive()) {
        let layer = normalize(raw_tar(&entries), &unpack(1, &prefix, false));
        let layer = match layer {
            Ok(l) => l,
            Err(e) => return Err(TestCaseError::fail(format!("{e}\nentries: {entries:?}"))),
        };
        if let Err(e) = check_layer(&layer, &prefix, false) {
            prop_assert!(false, "{e}");
        }
    }

    /// Bytes that are not a tarball at all, in any of the formats: an error, never a panic.
    #[test]
    fn arbitrary_bytes_are_an_error(bytes in prop::collection::vec(any::<u8>(), 0..2048), magic in 0usize..5) {
        let heads: [&[u8]; 5] = [b"", &[0x1f, 0x8b, 8, 0], b"\xfd7zXZ\0", &[0x28, 0xb5, 0x2f, 0xfd], b"BZh91AY&SY"];
        let data = [heads[magic], &bytes].concat();
        prop_assert!(normalize(data, &unpack(0, "", false)).is_err());
    }
}

mod ends;

/// One pax record as generated: its key, its value, and how far its length field is off.
#[derive(Debug, Clone)]
struct PaxRecord {
    key: &'static str,
    value: Vec<u8>,
    len_off: i8,
}

/// One member (`f`, 1 byte) and the extension headers before it.
#[derive(Debug, Clone)]
struct Extended {
    global: Option<Vec<PaxRecord>>,
    long_name: Option<Vec<u8>>,
    pax: Option<Vec<PaxRecord>>,
}

impl PaxRecord {
    fn body(&self) -> Vec<u8> {
        [self.key.as_bytes(), b"=", &self.value, b"\n"].concat()
    }

    /// The length field as written: the record's true length, `len_off` away.
    fn written_len(&self) -> i64 {
        let body = self.body().len();
        let len = (1..).map(|digits| digits + 1 + body).find(|len| len.to_string().len() + 1 + body == *len);
        (len.unwrap() as i64 + self.len_off as i64).max(0)
    }

    /// Whether the written length counts the record as written (an offset can add a digit).
    fn len_is_true(&self) -> bool {
        let written = self.written_len();
        written.to_string().len() + 1 + self.body().len() == written as usize
    }
}

fn encode_pax(records: &[PaxRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(format!("{} ", r.written_len()).as_bytes());
        out.extend_from_slice(&r.body());
    }
    out
}

fn extension(kind: u8, name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_entry_type(EntryType::new(kind));
    h.set_size(data.len() as u64);
    h.set_cksum();
    let mut out = [h.as_bytes(), data].concat();
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn extended_tar(case: &Extended) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(records) = &case.global {
        out.extend(extension(b'g', "global", &encode_pax(records)));
    }
    if let Some(name) = &case.long_name {
        out.extend(extension(b'L', "././@LongLink", &[name.as_slice(), b"\0"].concat()));
    }
    if let Some(records) = &case.pax {
        out.extend(extension(b'x', "pax", &encode_pax(records)));
    }
    out.extend(raw_tar(&[file("f")]));
    out
}

/// The model: whether the guard must let `case` through.
fn guard_accepts(case: &Extended) -> bool {
    let parses = |records: &[PaxRecord]| {
        let mut keys: Vec<_> = records.iter().map(|r| r.key).collect();
        keys.sort();
        keys.dedup();
        keys.len() == records.len() && records.iter().all(|r| r.len_is_true() && !r.value.contains(&b'\n'))
    };
    let sparse = |records: &[PaxRecord]| records.iter().any(|r| r.key.starts_with("GNU.sparse."));
    if let Some(g) = &case.global {
        if !parses(g) || sparse(g) || g.iter().any(|r| ["path", "linkpath", "size"].contains(&r.key)) {
            return false;
        }
    }
    if let Some(name) = &case.long_name {
        if name.len() + 1 > 4096 || name.contains(&0) {
            return false;
        }
    }
    let Some(pax) = &case.pax else { return true };
    let bad_path =
        |r: &PaxRecord| r.key == "path" && (r.value.len() >= 4096 || r.value.contains(&0) || case.long_name.is_some());
    parses(pax) && !sparse(pax) && pax.iter().all(|r| r.key != "size" || r.value == b"1") && !pax.iter().any(bad_path)
}

fn pax_record() -> impl Strategy<Value = PaxRecord> {
    let path = prop_oneof![
        Just(b"ok/name".to_vec()),
        Just(b"a\0b".to_vec()),
        Just(b"a\nb".to_vec()),
        Just(vec![b'p'; 4095]),
        Just(vec![b'p'; 4096]),
    ];
    let value = prop_oneof![
        path.prop_map(|v| ("path", v)),
        prop_oneof![Just("1"), Just("5"), Just("99999999999999999999"), Just("-5"), Just("1a")]
            .prop_map(|v| ("size", v.as_bytes().to_vec())),
        "[ -~\n]{0,40}".prop_map(|v| ("comment", v.into_bytes())),
        Just(("GNU.sparse.major", b"1".to_vec())),
        Just(("mtime", b"1600000000.5".to_vec())),
    ];
    let len_off = prop_oneof![8 => Just(0i8), 1 => -2i8..=2];
    (value, len_off).prop_map(|((key, value), len_off)| PaxRecord { key, value, len_off })
}

fn extended() -> impl Strategy<Value = Extended> {
    let records = || prop::collection::vec(pax_record(), 0..4);
    let long_name = prop_oneof![
        Just(b"long/name".to_vec()),
        Just(b"long\0name".to_vec()),
        (4090usize..4100).prop_map(|n| vec![b'n'; n]),
    ];
    (prop::option::of(records()), prop::option::of(long_name), prop::option::of(records()))
        .prop_map(|(global, long_name, pax)| Extended { global, long_name, pax })
}

/// The guard's output for `data`, or its refusal's text.
fn through_guard(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match io::copy(&mut tar_guard::TarGuard::new(data), &mut out) {
        Ok(_) => Ok(out),
        Err(e) => Err(tar_guard::refusal(&e).map(|r| r.to_string()).ok_or_else(|| format!("not a refusal: {e}"))?),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The guard refuses exactly what the model refuses, and passes what it accepts through
    /// byte for byte: the tar reader then sees the stream it saw without the guard.
    #[test]
    fn the_guard_judges_extension_headers_as_the_model_does(case in extended()) {
        let data = extended_tar(&case);
        match (guard_accepts(&case), through_guard(&data)) {
            (true, Ok(out)) => prop_assert!(out == data, "accepted but changed"),
            (false, Err(message)) => prop_assert!(message.len() < 400, "a long message: {}", message.len()),
            (model, guard) => prop_assert!(false, "model accepts: {model}; guard: {:?}", guard.map(|_| "accepted")),
        }
    }

    /// Every archive the guard accepts gives the layer it gives without the guard.
    #[test]
    fn accepted_archives_give_the_layer_of_the_unguarded_reader(
        (entries, prefix) in valid_archive(),
        case in extended().prop_filter("accepted", guard_accepts),
    ) {
        let u = unpack(0, &prefix, false);
        let mut data = extended_tar(&case);
        data.truncate(data.len() - 1024); // the end blocks: the valid archive follows
        data.extend(raw_tar(&entries));
        let guarded = normalize(data.clone(), &u).map_err(|e| e.to_string());
        let unguarded = normalize_unguarded(&data, &u);
        prop_assert_eq!(guarded.is_ok(), unguarded.is_ok(), "guarded: {:?}", guarded.as_ref().err());
        prop_assert!(guarded.ok() == unguarded.ok(), "the layers differ");
    }
}

/// The normalized tar of `data` read by the tar crate alone, as before the guard.
fn normalize_unguarded(data: &[u8], u: &Unpack) -> Result<Vec<u8>, String> {
    let mut normalizer = Normalizer::new("test", u, settings().epoch).map_err(|e| e.to_string())?;
    let mut out = tar::Builder::new(Vec::new());
    out.mode(tar::HeaderMode::Deterministic);
    normalizer.begin(&mut out).map_err(|e| e.to_string())?;
    for entry in tar::Archive::new(data).entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        normalizer.append(&mut entry, &mut out).map_err(|_| "refused")?;
    }
    normalizer.finish().map_err(|_| "refused")?;
    out.into_inner().map_err(|e| e.to_string())
}

/// GNU tar's pax sparse format 0.0 repeats `GNU.sparse.offset` and `GNU.sparse.numbytes`: it
/// is refused as the sparse file it is, not as a malformed header.
#[test]
fn pax_sparse_0_0_is_refused_as_a_sparse_file() {
    let records = ["GNU.sparse.size", "GNU.sparse.numblocks", "GNU.sparse.offset", "GNU.sparse.offset"];
    let records: Vec<_> = records.iter().map(|key| PaxRecord { key, value: b"1".to_vec(), len_off: 0 }).collect();
    let case = Extended { global: None, long_name: None, pax: Some(records) };
    refused(normalize(extended_tar(&case), &unpack(0, "app", false)), "sparse files are not supported");
}

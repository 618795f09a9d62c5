//! The rootfs against hostile layers: generated ones for what must never happen (a write
//! outside its directory, a host copy that differs from the model), and examples for what
//! whiteouts and hard links mean.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum E {
    Dir(String),
    File(String, u8),
    Link(String, String),
    Hard(String, String),
    Fifo(String),
}

/// A tar of `entries` with raw names and link targets (no tar library checks on the way).
/// `CANARY` in a link target stands for the canary directory's absolute path.
fn tar(entries: &[E], canary: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, data, link) = match e {
            E::Dir(n) => (n, tar::EntryType::Directory, vec![], String::new()),
            E::File(n, b) => (n, tar::EntryType::Regular, vec![*b; 3], String::new()),
            E::Link(n, t) => (n, tar::EntryType::Symlink, vec![], t.replace("CANARY", &canary.display().to_string())),
            E::Hard(n, t) => (n, tar::EntryType::Link, vec![], t.clone()),
            E::Fifo(n) => (n, tar::EntryType::Fifo, vec![], String::new()),
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(7);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A rootfs in `tmp/root`, beside `tmp/canary` holding one file.
fn setup() -> (tempfile::TempDir, Rootfs) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("canary")).unwrap();
    std::fs::write(tmp.path().join("canary/keep"), "canary").unwrap();
    let rootfs = Rootfs::create(&tmp.path().join("root"), u64::MAX).unwrap();
    (tmp, rootfs)
}

fn layer(rootfs: &mut Rootfs, tmp: &Path, entries: &[E]) -> Result<()> {
    rootfs.apply_tar(&tar(entries, &tmp.join("canary"))[..], "layer")
}

/// Kind, link target and file content of every path on the host under `root`; and which
/// paths share an inode.
fn host_tree(root: &Path) -> (BTreeMap<String, String>, BTreeMap<String, u64>) {
    let (mut tree, mut inodes) = (BTreeMap::new(), BTreeMap::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                inodes.insert(rel.clone(), meta.ino());
                format!("file {}", meta.len())
            };
            tree.insert(rel, what);
        }
    }
    (tree, inodes)
}

/// The same, from the model.
fn model_tree(rootfs: &Rootfs) -> (BTreeMap<String, String>, BTreeMap<String, u64>) {
    let (mut tree, mut inodes) = (BTreeMap::new(), BTreeMap::new());
    for (path, node) in rootfs.tree.iter().filter(|(p, _)| !p.is_root()) {
        let rel = path.as_path().display().to_string();
        let what = match &node.kind {
            Kind::Dir => "dir".to_string(),
            Kind::File => {
                inodes.insert(rel.clone(), node.meta.inode);
                format!("file {}", node.meta.size)
            }
            Kind::Symlink(t) => format!("link {}", String::from_utf8_lossy(t)),
            Kind::Special => "special".to_string(),
        };
        tree.insert(rel, what);
    }
    (tree, inodes)
}

/// Whether two maps path → id group the paths alike (the ids themselves differ).
fn same_grouping(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> bool {
    a.keys().eq(b.keys()) && a.keys().all(|p| a.keys().all(|q| (a[p] == a[q]) == (b[p] == b[q])))
}

fn paths(rootfs: &Rootfs) -> Vec<String> {
    model_tree(rootfs).0.into_keys().collect()
}

fn name() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        4 => prop_oneof![Just("a"), Just("b"), Just("c")],
        1 => Just(".."),
        1 => Just("."),
        2 => prop_oneof![Just(".wh.a"), Just(".wh.b"), Just(".wh..wh..opq")],
        1 => prop_oneof![Just(".wh.."), Just(".wh..."), Just(".wh."), Just(".wh..wh.plnk")],
    ];
    (prop::bool::weighted(0.1), prop::collection::vec(part, 1..4))
        .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
}

fn entry() -> impl Strategy<Value = E> {
    let target = prop_oneof![
        Just("a"),
        Just(".."),
        Just("../.."),
        Just("/"),
        Just("/a/b"),
        Just("../canary"),
        Just("../../canary"),
        Just("CANARY"),
        Just("CANARY/keep"),
        Just("b/../../.."),
    ]
    .prop_map(str::to_string);
    prop_oneof![
        name().prop_map(E::Dir),
        (name(), any::<u8>()).prop_map(|(n, b)| E::File(n, b)),
        (name(), target).prop_map(|(n, t)| E::Link(n, t)),
        (name(), name()).prop_map(|(n, t)| E::Hard(n, t)),
        name().prop_map(E::Fifo),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the layers hold, each is applied or refused as bad input, and: nothing beside the
    /// rootfs changes, and the host copy is exactly the model (kinds, link targets, sizes,
    /// which names share a file), a tree whose every parent is a directory.
    #[test]
    fn hostile_layers_never_write_outside_and_the_host_copy_is_the_model(
        layers in prop::collection::vec(prop::collection::vec(entry(), 1..10), 1..4)
    ) {
        let (tmp, mut rootfs) = setup();
        for entries in &layers {
            // Refused as bad input, or applied; never an I/O failure of the host copy.
            if let Err(e) = layer(&mut rootfs, tmp.path(), entries) {
                prop_assert_eq!(e.exit_code() as i32, 1, "{}", e);
            }
        }
        let beside: Vec<String> =
            std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        prop_assert_eq!(beside.len(), 2, "{:?}", beside);
        prop_assert_eq!(std::fs::read_dir(tmp.path().join("canary")).unwrap().count(), 1);
        prop_assert_eq!(std::fs::read_to_string(tmp.path().join("canary/keep")).unwrap(), "canary");
        let (host, host_inodes) = host_tree(&tmp.path().join("root"));
        let (model, model_inodes) = model_tree(&rootfs);
        prop_assert_eq!(&host, &model);
        prop_assert!(same_grouping(&host_inodes, &model_inodes), "{:?} vs {:?}", host_inodes, model_inodes);
        for (path, _) in rootfs.tree.iter() {
            for a in path.ancestors() {
                prop_assert_eq!(&rootfs.tree.get(&a).unwrap().kind, &Kind::Dir);
            }
        }
    }
}

fn file(n: &str) -> E {
    E::File(n.into(), 1)
}

#[test]
fn whiteouts_hide_only_what_lower_layers_put_there() {
    let (tmp, mut rootfs) = setup();
    let lower = [file("a/x"), file("a/y"), file("b/z"), file("b/d/deep"), file("c"), file("o/old")];
    layer(&mut rootfs, tmp.path(), &lower).unwrap();
    let upper = [
        file("a/new"),
        file("a/.wh.x"),
        file("b/kept"),
        file("b/.wh..wh..opq"), // after a child of its own layer: that child stays
        file("b/later"),
        file(".wh.c"),
        file("c"),              // the same layer adds it back
        file("o/.wh..wh..opq"), // opaque: the directory stays, empty of lower children
        file(".wh.missing"),
    ];
    layer(&mut rootfs, tmp.path(), &upper).unwrap();
    assert_eq!(paths(&rootfs), ["a", "a/new", "a/y", "b", "b/kept", "b/later", "c", "o"]);
    // A whiteout after the same layer's own entry does not hide it.
    layer(&mut rootfs, tmp.path(), &[file("e"), file(".wh.e"), file("a/new"), file(".wh.a")]).unwrap();
    assert_eq!(paths(&rootfs), ["a", "a/new", "b", "b/kept", "b/later", "c", "e", "o"]);
    assert_eq!(host_tree(&tmp.path().join("root")).0, model_tree(&rootfs).0);
}

#[test]
fn whiteouts_and_entries_never_go_through_a_link_or_out_of_the_tree() {
    let (tmp, mut rootfs) = setup();
    layer(&mut rootfs, tmp.path(), &[E::Link("s".into(), "CANARY".into()), E::Link("up".into(), "../..".into())])
        .unwrap();
    for (entry, why) in [
        (file("s/.wh.keep"), "symlink /s"),
        (file("s/.wh..wh..opq"), "symlink /s"),
        (file("up/.wh.canary"), "symlink /up"),
        (file("s/new"), "symlink /s"),
        (file(".wh.."), "no file name"),
        (file("a/.wh..."), "no file name"),
        (file("../canary/keep"), "`..`"),
        (file("/etc/passwd"), "absolute"),
        (E::Hard("h".into(), "../canary/keep".into()), "`..`"),
        (E::Hard("h".into(), "/etc/passwd".into()), "absolute"),
        (E::Hard("h".into(), "s/keep".into()), "not in the archive"),
        (E::Hard("h".into(), "s".into()), "a symlink"),
        (file("a\nb"), "control character"),
    ] {
        let err = layer(&mut rootfs, tmp.path(), std::slice::from_ref(&entry)).unwrap_err();
        assert_eq!(err.exit_code() as i32, 1, "{entry:?}");
        assert!(err.to_string().contains(why), "{entry:?}: {err}");
    }
    assert_eq!(std::fs::read_dir(tmp.path().join("canary")).unwrap().count(), 1);
    assert_eq!(paths(&rootfs), ["s", "up"]);
}

#[test]
fn a_hard_link_names_a_regular_file_of_the_tree_and_shares_its_content() {
    let (tmp, mut rootfs) = setup();
    layer(&mut rootfs, tmp.path(), &[E::Dir("d".into()), file("d/f")]).unwrap();
    assert!(layer(&mut rootfs, tmp.path(), &[E::Hard("h".into(), "d".into())]).is_err(), "a directory");
    for (link, target) in [("d/f", "d/f"), ("d", "d/f")] {
        let err = layer(&mut rootfs, tmp.path(), &[E::Hard(link.into(), target.into())]).unwrap_err();
        assert!(err.to_string().contains("replaced by this very entry"), "{err}");
    }
    layer(&mut rootfs, tmp.path(), &[E::Hard("h".into(), "./d/f".into()), E::Fifo("d/fifo".into())]).unwrap();
    let root = tmp.path().join("root");
    let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("h"), ino("d/f"));
    assert_eq!(rootfs.tree.get(&TreePath::from_member(b"h").unwrap()).unwrap().meta.uid, 7);
    assert!(!root.join("d/fifo").exists(), "special files are not written");
    assert_eq!(paths(&rootfs), ["d", "d/f", "h"]);
}

/// The bytes of every regular file under `root`.
fn bytes_on_disk(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// A tar holding one file of `size` zero bytes.
fn zeros(name: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.resize(out.len() + size.div_ceil(512) as usize * 512 + 1024, 0);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Layers of files of zeros against a limit: applied while they stay within it, refused
    /// (exit 1, naming the limit) once they would pass it, and never more on disk than it.
    #[test]
    fn the_layers_together_unpack_at_most_the_limit(
        sizes in proptest::collection::vec(0u64..200_000, 1..5),
        limit in 1_000u64..400_000,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut rootfs = Rootfs::create(&tmp.path().join("root"), limit).unwrap();
        let mut streamed = 0;
        for (i, size) in sizes.iter().enumerate() {
            let layer = zeros(&format!("f{i}"), *size);
            streamed += layer.len() as u64;
            match rootfs.apply_tar(&layer[..], &format!("layer {i}")) {
                Ok(()) => prop_assert!(streamed <= limit, "{} streamed past {}", streamed, limit),
                Err(e) => {
                    prop_assert!(streamed > limit, "refused within the limit: {}", e);
                    prop_assert_eq!(e.exit_code() as i32, 1);
                    prop_assert!(e.to_string().contains("IMGBUILD_MAX_UNPACKED"), "{}", e);
                    break;
                }
            }
        }
        prop_assert!(bytes_on_disk(&tmp.path().join("root")) <= limit + 4096);
    }
}

#[test]
fn a_sparse_entry_is_counted_by_what_it_writes() {
    // A GNU sparse file of 8 MiB whose one data block is its last: 2 KiB of tar.
    let real: u64 = 8 << 20;
    let mut h = tar::Header::new_gnu();
    h.set_path("sparse").unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(512);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.sparse[0].offset.copy_from_slice(format!("{:011o}\0", real - 512).as_bytes());
    gnu.sparse[0].numbytes.copy_from_slice(b"00000001000\0");
    gnu.realsize.copy_from_slice(format!("{real:011o}\0").as_bytes());
    h.set_cksum();
    let mut layer = h.as_bytes().to_vec();
    layer.extend_from_slice(&[b'x'; 512]);
    layer.extend_from_slice(&[0u8; 1024]);
    let tmp = tempfile::tempdir().unwrap();
    let mut rootfs = Rootfs::create(&tmp.path().join("root"), 1 << 20).unwrap();
    let err = rootfs.apply_tar(&layer[..], "sparse layer").unwrap_err();
    assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
    let mut roomy = Rootfs::create(&tmp.path().join("roomy"), 1 << 30).unwrap();
    roomy.apply_tar(&layer[..], "sparse layer").unwrap();
    assert_eq!(std::fs::metadata(tmp.path().join("roomy/sparse")).unwrap().len(), real, "within the limit it is whole");
}

/// A base without the directories a booting system mounts on gets them; whatever a layer put
/// at those paths (a directory with its mode, a symlink) stays as it was.
#[test]
fn mount_points_are_made_only_where_no_layer_made_them() {
    let (tmp, mut rootfs) = setup();
    layer(&mut rootfs, tmp.path(), &[file("bin/sh"), E::Dir("run".into()), E::Link("tmp".into(), "var/tmp".into())])
        .unwrap();
    rootfs.add_mount_points().unwrap();
    let root = tmp.path().join("root");
    for (name, mode) in [("dev", 0o755), ("proc", 0o555), ("sys", 0o555)] {
        let meta = std::fs::symlink_metadata(root.join(name)).unwrap();
        assert!(meta.is_dir(), "{name}");
        // The disk gets the model's modes (the host copy is private to imgbuild).
        assert_eq!(rootfs.tree.get(&TreePath::from_member(name.as_bytes()).unwrap()).unwrap().meta.mode, mode);
    }
    assert!(std::fs::symlink_metadata(root.join("tmp")).unwrap().file_type().is_symlink(), "the layer's link stays");
    assert_eq!(paths(&rootfs), ["bin", "bin/sh", "dev", "proc", "run", "sys", "tmp"]);
    assert_eq!(host_tree(&root).0, model_tree(&rootfs).0);
}

/// A base layer is read as other runtimes read it: a directory header that gives itself a
/// size (the tar crate alone would skip the next member as its data) is refused.
#[test]
fn a_base_layer_that_runtimes_would_read_otherwise_is_refused() {
    use crate::layer::tar_guard::tests::header;
    let (tmp, mut rootfs) = setup();
    let mut hidden = header("etc/evil", b'0', 2);
    hidden.resize(1024, 0);
    let layer = [header("d/", b'5', 1024), hidden, vec![0; 1024]].concat();
    let e = rootfs.apply_tar(&layer[..], "base layer").unwrap_err();
    assert!(e.to_string().contains("a `5` entry (no data) whose header gives it 1024 bytes"), "{e}");
    assert!(!tmp.path().join("root/etc/evil").exists());
}

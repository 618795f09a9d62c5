//! Layers that are tricky but valid, from every source format, on a base made from a
//! root-filesystem tarball: what imgbuild emits unpacks with `umoci` and runs under Podman,
//! and the container sees the tree the sources describe.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::debian;
use super::fixtures::{self, Entry};
use super::harness::*;
use super::http::Fault;

const LONG: &str =
    "a-name-longer-than-the-hundred-bytes-a-plain-tar-header-holds-so-it-needs-a-gnu-long-name-entry-of-its-own";

/// The tricky-but-valid layer: deep and chained relative links, an absolute link into its
/// prefix, a hard link, a repeated directory, parents never listed, unicode and long names.
fn tricky() -> Vec<Entry> {
    let f = |p: &str, data: &str, mode| Entry::File(format!("tricky-1.0/{p}"), data.as_bytes().to_vec(), mode);
    let link = |p: &str, t: &str| Entry::Symlink(format!("tricky-1.0/{p}"), t.to_string());
    vec![
        Entry::Dir("tricky-1.0/"),
        f("data/file.txt", "the data\n", 0o644),
        Entry::Dir("tricky-1.0/a/"),
        link("a/b/c/d/deep", "../../../../data/file.txt"),
        link("s1", "a/b"),
        link("s2", "s1/c/d/deep"),
        link("abs", "/opt/tricky/data/file.txt"),
        Entry::Hardlink("tricky-1.0/hard.txt".into(), "tricky-1.0/data/file.txt".into()),
        Entry::Dir("tricky-1.0/a/"),
        f("implicit/x/y/file", "implicit parents\n", 0o644),
        f("ünïcödé/日本語.txt", "unicode\n", 0o644),
        f(&format!("long/{LONG}/{LONG}.txt"), "long\n", 0o644),
        link("long-link", &format!("long/{LONG}/{LONG}.txt")),
        f("bin/hello", "#!/bin/sh\necho hello from the tricky layer\n", 0o775),
    ]
}

/// A layer at `/` whose links are absolute, as a root filesystem's are.
fn rootish() -> Vec<Entry> {
    vec![
        Entry::Symlink("usr/local/bin/tricky-hello".into(), "/opt/tricky/bin/hello".into()),
        Entry::File("etc/rootish.conf".into(), b"rootish\n".to_vec(), 0o644),
        Entry::Symlink("etc/rootish-link".into(), "/etc/rootish.conf".into()),
    ]
}

fn plain() -> Vec<Entry> {
    vec![Entry::File("plain/README".into(), b"plain gzip\n".to_vec(), 0o644)]
}

/// Writes a recipe for `data` (served at `dist/{file}`).
pub(super) fn recipe(p: &TestProject, name: &str, file: &str, data: Vec<u8>, unpack: &str) {
    let hex = fixtures::sha256_hex(&data);
    p.server.serve(&format!("dist/{file}"), data, Fault::None);
    let url = p.server.url(&format!("dist/{file}"));
    p.write_recipe(
        &format!("{name}.toml"),
        &format!("name = \"{name}\"\nversion = \"1\"\n\n[[source]]\nurl = \"{url}\"\nsha256 = \"{hex}\"\n\n[unpack]\n{unpack}"),
    );
}

/// A project without the seed's recipes and images, and a root of this machine's Debian files
/// (a shell and coreutils) in the directory returned.
pub(super) fn project_with_debian_root() -> (TestProject, PathBuf) {
    let p = TestProject::new();
    for f in std::fs::read_dir(p.root.join("recipes")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    std::fs::remove_dir_all(p.root.join("images")).unwrap();
    std::fs::create_dir_all(p.root.join("images")).unwrap();
    let root = p.path("rootfs");
    debian::debian_root(&root, debian::BASE_PACKAGES);
    (p, root)
}

/// A project whose image has a root-filesystem tarball (`.tar.xz`, made of this machine's
/// Debian files, with a device node) as its base, and one layer per other format.
fn project() -> TestProject {
    let (p, root) = project_with_debian_root();
    let rootfs = fixtures::tar_of_root(&root, &[Entry::CharDevice("dev/null".into())]);
    recipe(&p, "rootfs", "rootfs.tar.xz", fixtures::compressed("xz", &rootfs), "skip_devices = true\n");
    let tricky = fixtures::compressed("zst", &fixtures::tar(&tricky()));
    recipe(&p, "tricky", "tricky-1.0.tar.zst", tricky, "strip_components = 1\nprefix = \"/opt/tricky\"\n");
    recipe(&p, "rootish", "rootish.tar.bz2", fixtures::compressed("bz2", &fixtures::tar(&rootish())), "");
    recipe(&p, "plain", "plain.tar.gz", fixtures::tar_gz(&plain()), "prefix = \"/srv\"\n");
    std::fs::write(
        p.root.join("images/hostile.toml"),
        "name = \"hostile\"\nbase = \"rootfs\"\nlayers = [\"tricky\", \"rootish\", \"plain\"]\n\n[config]\nentrypoint = [\"/bin/sh\", \"-c\"]\n\n[[cluster.node]]\nid = 0\nhost = \"127.0.1.1\"\n",
    )
    .unwrap();
    p
}

/// Checks the unpacked tree: every link leads where the sources say, inside its prefix.
fn check_rootfs(rootfs: &Path) {
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let link = |p: &str| std::fs::read_link(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let t = "opt/tricky";
    assert_eq!(read(&format!("{t}/s2")), "the data\n", "chained links");
    assert_eq!(link(&format!("{t}/abs")), Path::new("/opt/tricky/data/file.txt"));
    assert_eq!(read(&format!("{t}/implicit/x/y/file")), "implicit parents\n");
    assert_eq!(read(&format!("{t}/ünïcödé/日本語.txt")), "unicode\n");
    assert_eq!(read(&format!("{t}/long/{LONG}/{LONG}.txt")), "long\n");
    let ino = |p: &str| std::fs::metadata(rootfs.join(p)).unwrap().ino();
    assert_eq!(ino(&format!("{t}/hard.txt")), ino(&format!("{t}/data/file.txt")), "a hard link");
    assert_eq!(link("usr/local/bin/tricky-hello"), Path::new("/opt/tricky/bin/hello"));
    assert_eq!(read("srv/plain/README"), "plain gzip\n");
    // The root filesystem's absolute link, which every Debian root has.
    assert_eq!(link("usr/lib64/ld-linux-x86-64.so.2"), Path::new("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"));
    assert!(!rootfs.join("dev/null").exists(), "the device node was left out");
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager=cgroupfs"]);
    c
}

/// Removes the image Podman imported and the lowercase link it read the layout through.
struct PodmanImage {
    id: String,
    link: PathBuf,
}

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = podman().args(["rmi", "--force", &self.id]).output();
        let _ = std::fs::remove_file(&self.link);
    }
}

/// What the container sees: each line of the script's output.
const SCRIPT: &str = "cd /opt/tricky && cat s2 abs hard.txt a/b/c/d/deep long-link ünïcödé/日本語.txt \
    && tricky-hello && cat /etc/rootish-link /srv/plain/README && stat -c %i hard.txt data/file.txt | uniq | wc -l";

#[test]
fn tricky_valid_layers_in_every_format_unpack_with_umoci_and_run_under_podman() {
    let p = project();
    let built = json(&p.run(&["--json", "node", "--id", "0"]));
    let layout = p.root.join("out/hostile-node-0");
    require_tool("umoci");
    let rootfs = p.path("bundle").join("rootfs");
    let image = format!("{}:node-0", layout.display());
    tool(Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(p.path("bundle")));
    check_rootfs(&rootfs);

    debian::require();
    let id = built["nodes"][0]["platforms"][0]["config_digest"].as_str().unwrap().trim_start_matches("sha256:");
    // Podman names the image after the layout's path, which must then be lowercase.
    let link = std::env::temp_dir().join(format!("imgbuild-hostile-{}", std::process::id()));
    let _guard = PodmanImage { id: id.to_string(), link: link.clone() };
    std::os::unix::fs::symlink(&layout, &link).unwrap();
    let run = podman()
        .args(["run", "--rm", "--network=none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
        .arg(format!("oci:{}:node-0", link.display()))
        .arg(SCRIPT)
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "podman run: {}\n{seen}", String::from_utf8_lossy(&run.stderr));
    let expected = [
        "the data",
        "the data",
        "the data",
        "the data",
        "long",
        "unicode",
        "hello from the tricky layer",
        "rootish",
        "plain gzip",
        "1",
    ];
    assert_eq!(seen.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn the_device_note_and_a_base_tarball_outside_the_root_are_reported() {
    let p = project();
    let out = p.run(&["node", "--id", "0"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("layer rootfs: left out 1 device node(s)"), "{}", stderr(&out));
    // Without the opt-in, the device node is refused, naming it.
    let rootfs = std::fs::read_to_string(p.root.join("recipes/rootfs.toml")).unwrap();
    p.write_recipe("rootfs.toml", &rootfs.replace("skip_devices = true\n", ""));
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("refusing unsafe entry `dev/null`") && stderr(&out).contains("skip_devices"));
    // A base must unpack at `/`.
    p.write_recipe("rootfs.toml", &format!("{rootfs}prefix = \"/opt\"\n"));
    let out = p.run(&["check"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("hostile.toml") && stderr(&out).contains("unpacks at `/opt`"), "{}", stderr(&out));
}

/// Issue #11: a root-filesystem tarball may not put anything at imgbuild's own paths
/// (/etc/imgbuild, the entrypoints), neither by name nor through a symlink.
#[test]
fn regression_11_a_root_tarball_may_not_write_imgbuilds_own_paths() {
    let node_id = || Entry::File("x/imgbuild/node-id".into(), b"7\n".to_vec(), 0o644);
    let cases = [
        (
            vec![Entry::File("etc/imgbuild/node-id".into(), b"7\n".to_vec(), 0o644)],
            "`etc/imgbuild/node-id`",
            "inside /etc/imgbuild",
        ),
        (
            vec![Entry::File("usr/local/bin/imgbuild-init".into(), b"#!/bin/sh\n".to_vec(), 0o755)],
            "`usr/local/bin/imgbuild-init`",
            "/usr/local/bin/imgbuild-init is a path imgbuild writes itself",
        ),
        (
            vec![Entry::Symlink("etc".into(), "x".into()), node_id()],
            "`x/imgbuild`",
            "through the symlink /etc it is /etc/imgbuild",
        ),
    ];
    for (entries, entry, reason) in cases {
        let p = TestProject::new();
        p.add_base();
        recipe(&p, "zookeeper", "root.tar", fixtures::tar(&entries), "");
        let out = p.run(&["node", "--id", "0"]);
        assert_exit(&out, 1);
        let err = stderr(&out);
        let named = format!("refusing unsafe entry {entry} in root.tar (zookeeper): ");
        assert!(err.contains(&named) && err.contains(reason) && err.contains("imgbuild writes itself"), "{err}");
    }
}

/// A raw ustar header of `kind` for `name` with `size` bytes of data to follow.
fn raw_header(name: &str, kind: u8, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn padded(mut data: Vec<u8>) -> Vec<u8> {
    data.resize(data.len().div_ceil(512) * 512, 0);
    data
}

/// Issue #11: extension headers are bounded before anything buffers them, and what the tar
/// crate would read otherwise than GNU tar is refused in plain words.
#[test]
fn hostile_tar_headers_are_refused_unread_and_named_in_words() {
    use std::io::Write;
    let p = TestProject::new();
    p.add_base();
    let file = padded([raw_header("a.txt", b'0', 2), b"hi".to_vec()].concat());
    let end = vec![0u8; 1024];

    // A 300 MiB GNU long name in a small gzip: refused from its header, the message short.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&raw_header("././@LongLink", b'L', 300 << 20)).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..300 {
        gz.write_all(&chunk).unwrap();
    }
    gz.write_all(&[&file[..], &end].concat()).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 4 << 20, "the input is small: {} bytes", bomb.len());
    p.serve_as_zookeeper("long-name.tar.gz", bomb);
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("a GNU long name (`L`) header of 314572800 bytes, more than the 4096"), "{err}");
    assert!(err.len() < 2000, "{} bytes of stderr", err.len());

    // A pax sparse file, a pax size that lies, a multi-volume continuation.
    let pax = |records: &str| padded([raw_header("pax", b'x', records.len() as u64), records.into()].concat());
    let cases = [
        (pax("22 GNU.sparse.major=1\n"), "refusing unsafe entry `a.txt`", "sparse files are not supported"),
        (pax("10 size=5\n"), "refusing unsafe entry `a.txt`", "pax `size=5` where its header says 2 bytes"),
        (padded(raw_header("mv", b'M', 0)), "refusing unsafe entry `mv`", "entry type `M` (GNU multi-volume"),
        // A directory given a size: the tar crate would skip the next member as its data, GNU
        // tar would list it (round 2 of the attacker review hid a file from `tar -t` so).
        (
            padded(raw_header("d/", b'5', 1024)),
            "refusing unsafe entry `d/`",
            "a `5` entry (no data) whose header gives it 1024 bytes",
        ),
    ];
    for (i, (before, entry, reason)) in cases.into_iter().enumerate() {
        p.serve_as_zookeeper(&format!("case-{i}.tar"), [before, file.clone(), end.clone()].concat());
        let out = p.run(&["node", "--id", "0"]);
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(err.contains(entry) && err.contains(reason), "{err}");
        assert!(!err.contains("Nonexhaustive"), "{err}");
    }
}

/// Issue 25: what a hostile compressed source makes decoding cost is bounded, and the limit
/// is named: an xz block declaring a 4 GiB dictionary (it took 2.1 GB of memory) is refused
/// from its header; 200k empty bzip2 streams (11 s per 2.8 MB, a decoder set up for each)
/// stop at the member limit.
#[test]
fn hostile_compressed_sources_are_refused_at_a_named_limit() {
    let p = TestProject::new();
    p.add_base();
    let flags = [0u8, 1];
    let mut xz = [&[0xfd, b'7', b'z', b'X', b'Z', 0][..], &flags].concat();
    xz.extend(crc32fast::hash(&flags).to_le_bytes());
    let block = [2u8, 0, 0x21, 1, 40, 0, 0, 0]; // one LZMA2 filter, dictionary property 40: 4 GiB
    xz.extend(block);
    xz.extend(crc32fast::hash(&block).to_le_bytes());
    xz.extend([0u8; 4096]);
    p.serve_as_zookeeper("big-dictionary.tar.xz", xz);
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("big-dictionary.tar.xz") && err.contains("imgbuild's decoder memory limit of 128 MiB"),
        "{err}"
    );

    let empty = b"BZh9\x17\x72\x45\x38\x50\x90\0\0\0\0"; // a bzip2 stream with no block
    p.serve_as_zookeeper("empty-streams.tar.bz2", empty.repeat(200_000));
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    let named = "bzip2 data: at byte 14336: more than 1024 members after 0 bytes decoded";
    assert!(err.contains(named) && err.contains("one member per 32 KiB decoded"), "{err}");
}

//! Outputs never destroy what imgbuild did not make (issue #11): `--out` replaces only an
//! output imgbuild wrote and that has not changed since; anything else is exit 2 with nothing
//! touched, and no failure leaves a temporary file behind.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::harness::*;

/// Everything at `path` (recursively, links not followed): kind, mode, content or link target.
fn snapshot(path: &Path) -> BTreeMap<String, String> {
    fn visit(base: &Path, path: &Path, out: &mut BTreeMap<String, String>) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        let rel = path.strip_prefix(base).unwrap().display().to_string();
        let mode = meta.permissions().mode();
        let what = if meta.file_type().is_symlink() {
            format!("link {:o} -> {}", mode, std::fs::read_link(path).unwrap().display())
        } else if meta.is_dir() {
            let mut children: Vec<_> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).collect();
            children.sort();
            for c in children {
                visit(base, &c, out);
            }
            format!("dir {mode:o} mtime {}", meta.mtime())
        } else {
            format!("file {mode:o} {:?}", super::fixtures::sha256_hex(&std::fs::read(path).unwrap()))
        };
        out.insert(rel, what);
    }
    let mut out = BTreeMap::new();
    visit(path.parent().unwrap(), path, &mut out);
    out
}

/// Temporary siblings an output left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.ends_with("-old"))
        .collect()
}

/// Runs imgbuild with `args` and `--out out`, expects exit 2 and `out` exactly as it was.
fn refused(p: &TestProject, args: &[&str], out: &Path, why: &str) {
    let before = snapshot(out);
    let result = p.cmd().args(args).arg("--out").arg(out).output().unwrap();
    assert_exit(&result, 2);
    assert!(stderr(&result).contains(why), "expected `{why}`: {}", stderr(&result));
    assert_eq!(snapshot(out), before, "{} was changed", out.display());
    assert!(leftovers(out.parent().unwrap()).is_empty(), "{:?}", leftovers(out.parent().unwrap()));
}

#[test]
fn build_refuses_every_out_it_did_not_write_and_leaves_it_byte_identical() {
    let p = TestProject::new();
    p.add_base();
    let users = p.path("users");
    // A user's directory of work, with a read-only file and a nested directory.
    let work = users.join("work");
    std::fs::create_dir_all(work.join("src")).unwrap();
    std::fs::write(work.join("notes.txt"), "my notes").unwrap();
    std::fs::write(work.join("src/main.rs"), "fn main() {}").unwrap();
    std::fs::set_permissions(work.join("notes.txt"), std::fs::Permissions::from_mode(0o444)).unwrap();
    refused(&p, &["build"], &work, "did not write");
    refused(&p, &["vm", "--all"], &work, "did not write");
    refused(&p, &["vm", "--all", "--force"], &work, "did not write");
    // A user's file, as a layout, an archive and a VM directory.
    let file = users.join("notes.tar");
    std::fs::write(&file, "not a tar").unwrap();
    for args in
        [&["build"][..], &["build", "--format", "oci-archive"], &["node", "--id", "1", "--format", "docker-archive"]]
    {
        refused(&p, args, &file, "is a file");
    }
    // A real tar of the user's, made by tar: not one of imgbuild's archives.
    let tarball = users.join("backup.tar");
    tool(Command::new("tar").arg("-cf").arg(&tarball).arg("-C").arg(&users).arg("work"));
    refused(&p, &["build", "--format", "oci-archive"], &tarball, "imgbuild did not write");
    // An empty directory cannot take an archive (and is left as it is).
    let empty = users.join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(&p, &["build", "--format", "oci-archive"], &empty, "is a directory");

    // Another tool's OCI layout.
    require_tool("skopeo");
    let theirs = users.join("skopeo-layout");
    tool(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:bookworm-amd64", p.base_layout.display()),
        &format!("oci:{}:base", theirs.display()),
    ]));
    refused(&p, &["build"], &theirs, "did not write");

    // A symlink, even to an output imgbuild wrote: the link and what it points to stay.
    let ours = p.path("ours");
    assert_ok(&p.cmd().args(["build", "--out"]).arg(&ours).output().unwrap());
    let link = users.join("link");
    std::os::unix::fs::symlink(&ours, &link).unwrap();
    let ours_before = snapshot(&ours);
    refused(&p, &["build"], &link, "is a symlink");
    assert_eq!(snapshot(&ours), ours_before);

    // imgbuild's own layout, once another tool has added an image to it, is the user's too.
    tool(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:bookworm-amd64", p.base_layout.display()),
        &format!("oci:{}:added-by-hand", ours.display()),
    ]));
    refused(&p, &["build"], &ours, "has changed since");
    assert!(!p.root.join("out").exists(), "nothing was written to the default output either");
}

#[test]
fn a_build_replaces_its_own_output_whatever_its_format() {
    let p = TestProject::new();
    p.add_base();
    let layout = p.path("outputs/layout");
    let archive = p.path("outputs/cluster.tar");
    std::fs::create_dir_all(&layout).unwrap(); // an empty directory is fine
    let first = json(&p.cmd().args(["--json", "build", "--out"]).arg(&layout).output().unwrap());
    let again = json(&p.cmd().args(["--json", "build", "--out"]).arg(&layout).output().unwrap());
    assert_eq!(first["nodes"], again["nodes"]);
    assert!(layout.join(".imgbuild-output.json").is_file());
    // A single node into the same layout: replaced whole, it holds only that node.
    json(&p.cmd().args(["--json", "node", "--id", "2", "--out"]).arg(&layout).output().unwrap());
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let images = index["manifests"].as_array().unwrap().iter().filter(|m| m["artifactType"].is_null()).count();
    assert_eq!(images, 1);
    for format in ["oci-archive", "docker-archive", "oci-archive"] {
        json(&p.cmd().args(["--json", "build", "--format", format, "--out"]).arg(&archive).output().unwrap());
    }
    require_tool("skopeo");
    tool(Command::new("skopeo").args(["inspect", &format!("oci-archive:{}:node-1", archive.display())]));
    assert!(leftovers(&p.path("outputs")).is_empty(), "{:?}", leftovers(&p.path("outputs")));
    // A layout cannot replace an archive, nor an archive a layout.
    refused(&p, &["build"], &archive, "is a file");
    refused(&p, &["build", "--format", "oci-archive"], &layout, "is a directory");
}

#[test]
fn vm_keeps_a_booted_nodes_overlay_unless_forced() {
    let p = TestProject::new();
    p.add_base();
    let vm = p.path("vm");
    json(&p.cmd().args(["--json", "vm", "--all", "--out"]).arg(&vm).output().unwrap());
    json(&p.cmd().args(["--json", "vm", "--all", "--out"]).arg(&vm).output().unwrap());
    // What a boot does to node 1's overlay: its clusters now hold the node's data.
    tool(Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -P 0x5a 0 64k"]).arg(vm.join("node-1.qcow2")));
    refused(&p, &["vm", "--all"], &vm, "node-1.qcow2 changed");
    refused(&p, &["vm", "--id", "2"], &vm, "--force");
    // A file the user added beside the disks is theirs as well.
    std::fs::write(vm.join("notes.txt"), "boot log").unwrap();
    refused(&p, &["vm", "--all"], &vm, "notes.txt was added");
    std::fs::remove_file(vm.join("notes.txt")).unwrap();
    json(&p.cmd().args(["--json", "vm", "--all", "--force", "--out"]).arg(&vm).output().unwrap());
    tool(Command::new("qemu-img").arg("check").arg(vm.join("node-1.qcow2")));
    assert!(leftovers(p.tmp.path()).is_empty());
}

/// A directory holding links to every tool `imgbuild vm` runs, but `missing`.
fn path_without(dir: &Path, missing: &str) -> std::ffi::OsString {
    std::fs::create_dir_all(dir).unwrap();
    for t in ["mke2fs", "debugfs", "qemu-img", "xorriso"].iter().filter(|t| **t != missing) {
        let found = tool(Command::new("sh").arg("-c").arg(format!("command -v {t}")));
        std::os::unix::fs::symlink(found.trim(), dir.join(t)).unwrap();
    }
    dir.as_os_str().to_owned()
}

#[test]
fn a_missing_tool_is_named_with_its_package_and_leaves_nothing_behind() {
    let p = TestProject::new();
    p.add_base();
    let vm = p.path("vm");
    json(&p.cmd().args(["--json", "vm", "--id", "0", "--out"]).arg(&vm).output().unwrap());
    for (missing, package) in [("mke2fs", "e2fsprogs"), ("xorriso", "xorriso"), ("qemu-img", "qemu-utils")] {
        let bin = p.path(&format!("bin-without-{missing}"));
        let before = snapshot(&vm);
        let out =
            p.cmd().env("PATH", path_without(&bin, missing)).args(["vm", "--all", "--out"]).arg(&vm).output().unwrap();
        assert_exit(&out, 6);
        let err = stderr(&out);
        assert!(err.contains(&format!("{missing}: not installed")), "{err}");
        assert!(err.contains(&format!("apt-get install {package}")), "{err}");
        assert_eq!(snapshot(&vm), before, "the previous output stays as it was");
        assert!(leftovers(p.tmp.path()).is_empty(), "{:?}", leftovers(p.tmp.path()));
    }
}

/// A process the test started, killed (by its id) when the test ends however it ends.
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn what_a_killed_vm_build_left_is_removed_by_the_next_run() {
    let p = TestProject::new();
    p.add_base();
    let mut child = Started(p.cmd().args(["--quiet", "vm", "--all", "--out", "vm"]).spawn().unwrap());
    let temp = p.root.join(format!(".vm.tmp-{}", child.0.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !temp.exists() {
        assert!(child.0.try_wait().unwrap().is_none(), "the build ended before writing anything");
        assert!(std::time::Instant::now() < deadline, "no temporary directory appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.0.kill().unwrap(); // SIGKILL: no destructor runs
    child.0.wait().unwrap();
    assert!(temp.exists(), "a killed run cannot clean up after itself");
    json(&p.run(&["--json", "vm", "--all", "--out", "vm"]));
    assert!(leftovers(&p.root).is_empty(), "{:?}", leftovers(&p.root));
}

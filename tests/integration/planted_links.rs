//! One writer for every file imgbuild writes in a user's tree (issue 25): a cloned project can
//! carry symlinks (git stores them) at any name, so links are planted at every temporary name
//! a writer could use (the predictable `.NAME.imgbuild-tmp-PID` of old, for the PIDs the
//! command can get; names shaped as the random ones) and at the targets, pointing outside the
//! project at a file and at names that do not exist yet. Every writer runs (init, recipe
//! --update, deploy, build's archive and layout, vm); nothing outside changes. (That the
//! writer passes over a taken random name is `atomic_file`'s unit test.)

use std::path::{Path, PathBuf};

use super::harness::*;

/// PIDs the next commands can get: the kernel hands them out in order from the last one.
fn next_pids() -> std::ops::Range<u32> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").unwrap().trim().parse().unwrap();
    last + 1..last + 3000
}

/// A directory outside the project, with a file a link could overwrite.
struct Outside {
    dir: PathBuf,
}

impl Outside {
    fn new(p: &TestProject) -> Outside {
        let dir = p.path("outside");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bashrc"), "mine\n").unwrap();
        Outside { dir }
    }

    /// Links beside `target` at every temporary name a writer of it could use.
    fn plant_around(&self, target: &Path) {
        let dir = target.parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let name = target.file_name().unwrap().to_str().unwrap();
        let hex = (0..64u64).map(|i| format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let suffixes = next_pids().map(|pid| pid.to_string()).chain(hex);
        for (i, suffix) in suffixes.enumerate() {
            for mark in [".imgbuild-tmp-", ".tmp-"] {
                self.plant(&dir.join(format!(".{name}{mark}{suffix}")), i);
            }
        }
    }

    /// A link at `at`: to the file outside, or (odd `i`) to a name outside that does not exist.
    fn plant(&self, at: &Path, i: usize) {
        let to = if i.is_multiple_of(2) { self.dir.join("bashrc") } else { self.dir.join(format!("new-{i}")) };
        // Planted once: the names around a file are the same for each of its writers.
        if let Err(e) = std::os::unix::fs::symlink(to, at) {
            assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{}", at.display());
        }
    }

    fn assert_untouched(&self, after: &str) {
        let names: Vec<_> = std::fs::read_dir(&self.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["bashrc"], "{after}: a file was made outside the project");
        assert_eq!(
            std::fs::read_to_string(self.dir.join("bashrc")).unwrap(),
            "mine\n",
            "{after}: written through a link"
        );
    }
}

#[test]
fn no_writer_follows_a_link_planted_at_its_temporary_or_target_name() {
    let p = TestProject::new();
    let outside = Outside::new(&p);
    let fresh = p.path("fresh");
    // `init`: links beside every file it writes, then one at a file it would write.
    for file in [
        "images/fresh.toml",
        "images/fresh/myid",
        "images/fresh/zoo.cfg",
        "recipes/base.toml",
        "recipes/jdk.toml",
        "recipes/zookeeper.toml",
    ] {
        outside.plant_around(&fresh.join(file));
    }
    assert_ok(&p.cmd().arg("init").arg(&fresh).output().unwrap());
    outside.assert_untouched("init");
    let taken = p.path("taken");
    outside.plant_around(&taken.join("recipes/jdk.toml"));
    outside.plant(&taken.join("recipes/jdk.toml"), 0);
    let out = p.cmd().arg("init").arg(&taken).output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("jdk.toml"), "{}", stderr(&out));
    outside.assert_untouched("init over a link");

    // `recipe --update` (the reported attack), with a new version of the file.
    let recipe = fresh.join("recipes/zookeeper.toml");
    let zk = p.path("zookeeper-3.4.14.tar.gz");
    std::fs::write(&zk, p.input("zookeeper-3.4.10.tar.gz")).unwrap();
    outside.plant_around(&recipe);
    let out =
        p.cmd().current_dir(&fresh).args(["recipe", "--update", "recipes/zookeeper.toml"]).arg(&zk).output().unwrap();
    assert_ok(&out);
    assert!(std::fs::read_to_string(&recipe).unwrap().contains("zookeeper-3.4.14.tar.gz"));
    outside.assert_untouched("recipe --update");
    // A link at the recipe itself: the recipe read through it is replaced by the new one at
    // the link's name; the file it points to stays as it was.
    let elsewhere = p.path("elsewhere.toml");
    std::fs::rename(&recipe, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &recipe).unwrap();
    let linked = std::fs::read(&elsewhere).unwrap();
    let other = p.path("zookeeper-3.4.13.tar.gz");
    std::fs::write(&other, p.input("kafka_2.11-1.0.0.tgz")).unwrap();
    let out = p
        .cmd()
        .current_dir(&fresh)
        .args(["recipe", "--update", "recipes/zookeeper.toml"])
        .arg(&other)
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(!std::fs::symlink_metadata(&recipe).unwrap().is_symlink());
    assert!(std::fs::read_to_string(&recipe).unwrap().contains("zookeeper-3.4.13.tar.gz"));
    assert_eq!(std::fs::read(&elsewhere).unwrap(), linked);
    outside.assert_untouched("recipe --update of a linked recipe");

    // Outputs: a directory (deploy), an archive, a layout; links around each and inside none
    // (a directory output is made new under a random name).
    for out_name in ["compose-out", "image.tar", "layout", "vm-out"] {
        outside.plant_around(&p.root.join(out_name));
    }
    // `deploy compose` names each node's image by its ID: it builds from the store.
    p.add_base();
    assert_ok(&p.run(&["deploy", "compose", "--out", "compose-out"]));
    outside.assert_untouched("deploy compose");
    assert_ok(&p.run(&["build", "--format", "oci-archive", "--out", "image.tar"]));
    outside.assert_untouched("build --format oci-archive");
    assert_ok(&p.run(&["build", "--out", "layout"]));
    outside.assert_untouched("build (layout)");
    // VM disks, templates, seeds and scripts (mke2fs, xorriso: as the VM tests need).
    assert_ok(&p.run(&["vm", "--all", "--out", "vm-out"]));
    outside.assert_untouched("vm");
}

/// A link at `rel` (below `dir`) to the directory outside: the command is refused (exit 1,
/// naming the link) and nothing outside changes; the link is removed again.
fn refused_at(outside: &Outside, dir: &Path, rel: &str, cmd: &mut std::process::Command) {
    let at = dir.join(rel);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside.dir, &at).unwrap();
    let out = cmd.output().unwrap();
    let what = format!("{cmd:?} with a link at {rel}");
    assert_exit(&out, 1);
    assert!(stderr(&out).contains(rel) && stderr(&out).contains("symbolic link"), "{what}: {}", stderr(&out));
    std::fs::remove_file(&at).unwrap();
    outside.assert_untouched(&what);
}

/// Links at every directory a writer derives below the directory the user named (issue 25,
/// point 3): `out`, `out/NAME` of every default output, `images`, `images/NAME` and `recipes`
/// of `init`. Each is refused before any work; an explicit `--out` through a link is the
/// user's choice and is followed.
#[test]
fn no_writer_follows_a_link_at_a_directory_it_derives() {
    let p = TestProject::new();
    // `deploy compose` builds (its file names each node's image ID): the base is in the store.
    p.add_base();
    let outside = Outside::new(&p);
    let fresh = p.path("fresh");
    for rel in ["images", "images/fresh", "recipes"] {
        refused_at(&outside, &fresh, rel, p.cmd().arg("init").arg(&fresh));
        std::fs::remove_dir_all(&fresh).unwrap();
    }
    let writers: [(&[&str], &str); 6] = [
        (&["deploy", "compose"], "out/zk-kafka-compose"),
        (&["deploy", "kubernetes", "--repo", "127.0.0.1:1/zk"], "out/zk-kafka-kubernetes"),
        (&["build"], "out/zk-kafka"),
        (&["build", "--format", "oci-archive"], "out/zk-kafka.tar"),
        (&["node", "--id", "0"], "out/zk-kafka-node-0"),
        (&["vm", "--all"], "out/zk-kafka-vm"),
    ];
    for (args, output) in writers {
        refused_at(&outside, &p.root, "out", p.cmd().args(args));
        refused_at(&outside, &p.root, output, p.cmd().args(args));
        std::fs::remove_dir_all(p.root.join("out")).unwrap();
    }
    // Named by the user: followed.
    let chosen = p.path("chosen");
    std::fs::create_dir_all(&chosen).unwrap();
    std::os::unix::fs::symlink(&chosen, p.root.join("mine")).unwrap();
    assert_ok(&p.run(&["deploy", "compose", "--out", "mine/compose"]));
    assert!(chosen.join("compose/compose.yaml").is_file());
}

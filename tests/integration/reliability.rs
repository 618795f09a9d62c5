//! Faults, bad input and concurrency never corrupt the store or produce a wrong image.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::fixtures::{self, Entry};
use super::harness::*;
use super::http::Fault;

/// An output directory, if present, is complete: its index parses and names blobs it holds.
fn assert_complete_or_absent(layout: &Path) {
    if !layout.exists() {
        return;
    }
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    for m in index["manifests"].as_array().unwrap() {
        let hex = m["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert!(layout.join("blobs/sha256").join(hex).is_file(), "{} names a missing blob", layout.display());
    }
}

#[test]
fn a_build_killed_at_any_moment_leaves_nothing_a_later_build_would_trust() {
    let p = TestProject::new();
    p.add_base();
    // A reference build, in a store of its own.
    let reference = p
        .cmd()
        .env("IMGBUILD_STORE", p.path("reference-store"))
        .args(["--json", "store", "add"])
        .arg(&p.base_layout)
        .output()
        .unwrap();
    assert_ok(&reference);
    let reference = json(
        &p.cmd()
            .env("IMGBUILD_STORE", p.path("reference-store"))
            .args(["--json", "build", "--out", "reference"])
            .output()
            .unwrap(),
    );

    // Slow downloads, so that kills land while fetching, while writing layers and while writing outputs.
    for (name, data) in &p.inputs {
        p.server.serve(&format!("dist/{name}"), data.clone(), Fault::Slow { pause_ms: 15 });
    }
    let layout = p.root.join("out/zk-kafka");
    for delay_ms in [30, 120, 250, 400, 550, 700, 850, 1000, 1150, 1300, 1500] {
        let mut child = p.cmd().args(["--quiet", "build"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL; the build may already have finished
        let _ = child.wait();
        let verify = p.run(&["store", "verify"]);
        assert!(verify.status.success(), "store corrupt after a kill at {delay_ms} ms: {}", stderr(&verify));
        assert_complete_or_absent(&layout);
    }
    // Interrupted downloads were resumed, not restarted from scratch.
    let ranged =
        p.inputs.iter().flat_map(|(n, _)| p.server.requests(&format!("dist/{n}"))).filter(|r| r.is_some()).count();
    assert!(ranged > 0, "no download was resumed");

    let after = json(&p.run(&["--json", "build"]));
    assert_eq!(after["nodes"], reference["nodes"], "a build after the kills differs from a clean one");
    assert_ok(&p.run(&["store", "verify"]));
}

#[test]
fn eight_builds_at_once_and_two_clusters_share_one_store() {
    let p = TestProject::new();
    p.add_base();
    // A second cluster made of the same recipes.
    let def = std::fs::read_to_string(p.root.join("images/zk-kafka.toml")).unwrap();
    let pair = def
        .replace("name = \"zk-kafka\"", "name = \"zk-pair\"")
        .replace("[[cluster.node]]\nid = 2\nhost = \"127.0.1.3\"\n", "");
    assert_ne!(pair, def);
    std::fs::write(p.root.join("images/zk-pair.toml"), pair).unwrap();
    let children: Vec<_> = (0..10)
        .map(|i| {
            let image = if i < 8 { "zk-kafka" } else { "zk-pair" };
            p.cmd()
                .args(["--json", "build", "--image", image, "--out"])
                .arg(p.path(&format!("out-{i}")))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let results: Vec<serde_json::Value> = children.into_iter().map(|c| json(&c.wait_with_output().unwrap())).collect();
    for r in &results[1..8] {
        assert_eq!(r["nodes"], results[0]["nodes"]);
    }
    assert_eq!(results[9]["nodes"], results[8]["nodes"]);
    assert_eq!(results[8]["nodes"].as_array().unwrap().len(), 2);
    // Shared inputs: fetched once, each layer built once, whichever build got there first.
    for (name, _) in p.inputs.iter().filter(|(n, _)| !n.contains("aarch64")) {
        assert_eq!(p.server.requests(&format!("dist/{name}")).len(), 1, "{name} fetched more than once");
    }
    let built: u64 = results.iter().map(|r| r["layers_built"].as_u64().unwrap()).sum();
    assert_eq!(built, 3);
    let l0 = &results[0]["nodes"][0]["platforms"][0]["layers"];
    let l8 = &results[8]["nodes"][0]["platforms"][0]["layers"];
    assert_eq!(
        l0.as_array().unwrap()[..5],
        l8.as_array().unwrap()[..5],
        "the clusters share base, recipe and runtime layers"
    );
    assert_ok(&p.run(&["store", "verify"]));
}

#[test]
fn a_stalled_server_times_out_with_a_clear_message() {
    let p = TestProject::new();
    p.add_base();
    for prefix in ["dist", "mirror"] {
        p.server.serve(
            &format!("{prefix}/zookeeper-3.4.10.tar.gz"),
            p.input("zookeeper-3.4.10.tar.gz").to_vec(),
            Fault::Stall,
        );
    }
    let start = Instant::now();
    let out = p.cmd().env("IMGBUILD_HTTP_TIMEOUT", "1").args(["node", "--id", "0"]).output().unwrap();
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("zookeeper-3.4.10.tar.gz") && err.contains("timed out"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "bounded: {:?}", start.elapsed());
}

#[test]
fn a_gzip_bomb_and_a_lying_tar_header_are_refused() {
    let p = TestProject::new();
    p.add_base();
    // 64 MB of zeros in a few hundred KB; the limit is set lower than that.
    p.serve_as_zookeeper(
        "evil.tar.gz",
        fixtures::tar_gz(&[Entry::File("zk/zeros".into(), vec![0u8; 64 << 20], 0o644)]),
    );
    let out = p.cmd().env("IMGBUILD_MAX_UNPACKED", "10000000").args(["node", "--id", "0"]).output().unwrap();
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("unpacks to more than 10000000 bytes"), "{}", stderr(&out));

    // A header that claims 8 GiB, followed by a few bytes.
    let mut raw = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_path("zk/huge").unwrap();
    h.set_size(8 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&[7u8; 4096]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    p.serve_as_zookeeper("evil.tar.gz", gz.finish().unwrap());
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("the tar data ends inside entry `zk/huge` (cut short"), "{}", stderr(&out));
    assert_ok(&p.run(&["store", "verify"]));
}

/// A small tmpfs the test mounts, unmounted when dropped (also when the test fails).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot mount a tmpfs for the disk-full test: it runs as root, as CI does");
        SmallDisk(dir.to_path_buf())
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(&self.0).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_and_a_read_only_store_fail_clearly_and_leave_nothing_trusted() {
    let p = TestProject::new();
    let disk = SmallDisk::mount(&p.path("small"), "2m");
    let store = p.path("small/store");
    let with_store = |args: &[&str]| p.cmd().env("IMGBUILD_STORE", &store).args(args).output().unwrap();
    assert_ok(&with_store(&["store", "add", p.base_layout.to_str().unwrap()]));
    let full = with_store(&["node", "--id", "0"]);
    assert_exit(&full, 4);
    assert!(stderr(&full).contains("No space left on device"), "{}", stderr(&full));
    assert_ok(&with_store(&["store", "verify"]));

    // With room again, the same store builds exactly what a clean store builds.
    disk.remount("size=200m");
    let built = json(&with_store(&["--json", "node", "--id", "0"]));
    assert_ok(&p.run(&["store", "add", p.base_layout.to_str().unwrap()]));
    let reference = json(&p.run(&["--json", "node", "--id", "0", "--out", "reference"]));
    assert_eq!(built["nodes"], reference["nodes"]);
    assert_ok(&with_store(&["store", "verify"]));

    // Read-only: a clear error, not a panic.
    disk.remount("ro");
    let ro = with_store(&["node", "--id", "1"]);
    assert_exit(&ro, 4);
    assert!(stderr(&ro).contains("Read-only file system"), "{}", stderr(&ro));
    disk.remount("rw");
    assert_ok(&with_store(&["store", "verify"]));
}

#[test]
fn gc_keeps_what_kept_outputs_need_and_waits_for_running_builds() {
    let p = TestProject::new();
    p.add_base();
    json(&p.run(&["--json", "node", "--id", "0", "--out", "kept"]));
    let gone = json(&p.run(&["--json", "node", "--id", "1", "--level", "9", "--out", "gone"]));
    std::fs::remove_dir_all(p.root.join("gone")).unwrap();
    let report = json(&p.run(&["--json", "store", "gc"]));
    assert_eq!(report["live_roots"], 1);
    assert!(report["removed_blobs"].as_u64().unwrap() >= 3, "{report}");
    // The level-9 layers only the removed output used are gone; the kept output rebuilds from the store alone.
    let level9 = gone["nodes"][0]["platforms"][0]["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    assert!(!p.store.join("blobs/sha256").join(&level9).exists());
    let again = json(&p.run(&["--json", "--offline", "node", "--id", "0", "--out", "kept"]));
    assert_eq!(again["layers_built"], 0);
    // Sources are kept for what is kept: the removed output can be rebuilt offline.
    json(&p.run(&["--json", "--offline", "node", "--id", "1", "--level", "9", "--out", "gone"]));
    assert_ok(&p.run(&["store", "verify"]));

    // With no output at all, what the project's recipes pin stays: a pulled or added base survives.
    for out in ["kept", "gone"] {
        std::fs::remove_dir_all(p.root.join(out)).unwrap();
    }
    let report = json(&p.run(&["--json", "store", "gc"]));
    assert_eq!(report["live_roots"], 0, "{report}");
    json(&p.run(&["--json", "--offline", "node", "--id", "0", "--out", "again"]));
    // Outside the project (a directory without recipes/) nothing is pinned: with no output
    // either, everything goes. (A --project that does not exist is refused, exit 2.)
    std::fs::remove_dir_all(p.root.join("again")).unwrap();
    let elsewhere = p.cmd().current_dir(p.path("")).args(["--json", "--project", ".", "store", "gc"]).output().unwrap();
    json(&elsewhere);
    assert_ok(&p.run(&["store", "verify"]));
    assert_exit(&p.run(&["--offline", "node", "--id", "0", "--out", "again"]), 3);

    // A collection started during a build waits for it, then keeps its output.
    for (name, data) in &p.inputs {
        p.server.serve(&format!("dist/{name}"), data.clone(), Fault::Slow { pause_ms: 20 });
    }
    let fresh_store = p.path("busy-store");
    let with = |args: &[&str]| {
        let mut c = p.cmd();
        c.env("IMGBUILD_STORE", &fresh_store).args(args);
        c
    };
    assert_ok(&with(&["store", "add", p.base_layout.to_str().unwrap()]).output().unwrap());
    let before = p.server.total_requests();
    let build = with(&["--json", "node", "--id", "2", "--out", "busy"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The build holds the store's build lock before it fetches: wait for its first request.
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.server.total_requests() == before {
        assert!(Instant::now() < deadline, "the build never started fetching");
        std::thread::sleep(Duration::from_millis(10));
    }
    let gc = with(&["--json", "store", "gc"]).output().unwrap();
    let built = json(&build.wait_with_output().unwrap());
    let gc = json(&gc);
    assert_eq!(gc["live_roots"], 1, "gc ran before the build registered its output: {gc}");
    let rebuilt = json(&with(&["--json", "--offline", "node", "--id", "2", "--out", "busy"]).output().unwrap());
    assert_eq!(rebuilt["layers_built"], 0);
    assert_eq!(rebuilt["nodes"], built["nodes"]);
}

/// Outputs share the store's blobs by hard link: a write to an output's blob must never become
/// what a later build (of this or any project) uses.
#[test]
fn writing_into_an_outputs_blob_never_corrupts_a_later_build() {
    use std::os::unix::fs::PermissionsExt;
    let p = TestProject::new();
    p.add_base();
    assert_ok(&p.run(&["build", "--out", "out/first"]));
    let blobs = p.root.join("out/first/blobs/sha256");
    let largest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .unwrap();
    let size = std::fs::metadata(&largest).unwrap().len() as usize;
    std::fs::set_permissions(&largest, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&largest, super::fixtures::noise(7, size)).unwrap();

    let again = p.run(&["build", "--out", "out/second"]);
    assert_ok(&again);
    for entry in std::fs::read_dir(p.root.join("out/second/blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(super::fixtures::sha256_hex(&std::fs::read(&path).unwrap()), name, "{} is corrupt", path.display());
    }
    assert_ok(&p.run(&["store", "verify"]));
}

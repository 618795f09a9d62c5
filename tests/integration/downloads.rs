//! Layers built while their sources download or are copied from a `--mirror` directory (issue
//! #16): a layer is recorded only once its source has hashed to its pin, so a download or a
//! mirror file with other bytes leaves no layer record and no blob; a download resumed after a
//! dropped connection, or a copy from a mirror, builds the same layer as a clean build.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cache::same_file;
use super::fixtures::{self, noise, Entry};
use super::harness::*;
use super::http::Fault;

const ZOOKEEPER: &str = "zookeeper-3.4.10.tar.gz";

/// `imgbuild` on the store `store` of project `p`.
fn on_store(p: &TestProject, store: &Path) -> Command {
    let mut c = p.cmd();
    c.env("IMGBUILD_STORE", store);
    c
}

/// The store's files under `dir` (relative paths).
fn files(store: &Path, dir: &str) -> Vec<String> {
    tree(&store.join(dir))
}

/// The layer digests (`sha256:…`) a store has records of.
fn layer_records(store: &Path) -> Vec<String> {
    files(store, "layers")
        .iter()
        .map(|f| {
            let record: serde_json::Value =
                serde_json::from_slice(&std::fs::read(store.join("layers").join(f)).unwrap()).unwrap();
            record["digest"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Another ZooKeeper: a tarball of the same shape with other content.
fn other_zookeeper() -> Vec<u8> {
    fixtures::tar_gz(&[
        Entry::Dir("zookeeper-3.4.10/"),
        Entry::Dir("zookeeper-3.4.10/bin/"),
        Entry::File("zookeeper-3.4.10/bin/zkServer.sh".into(), b"#!/bin/sh\necho not the pinned one\n".to_vec(), 0o755),
        Entry::File("zookeeper-3.4.10/zookeeper-3.4.10.jar".into(), noise(99, 300_000), 0o644),
    ])
}

/// The layer `data` makes as ZooKeeper's source: built by a project that pins it, in a store of
/// its own.
fn layer_of(p: &TestProject, data: &[u8], store: &Path) -> String {
    let other = TestProject::new();
    other.serve_as_zookeeper("other.tar.gz", data.to_vec());
    let base = p.base_layout.to_str().unwrap();
    assert_ok(&other.cmd().env("IMGBUILD_STORE", store).args(["store", "add", base]).output().unwrap());
    let out = other.cmd().env("IMGBUILD_STORE", store).args(["--json", "build"]).output().unwrap();
    let v = json(&out);
    let layers = v["cluster"]["platforms"][0]["layers"].as_array().unwrap().clone();
    let zookeeper = layers.iter().find(|l| l["created_by"].as_str().unwrap().contains("recipe zookeeper")).unwrap();
    zookeeper["digest"].as_str().unwrap().to_string()
}

/// Nothing of the source `wrong` is in `store`: not the source, not its layer's blob
/// (`wrong_layer`), no record naming it, nothing left in `tmp/` but a download to resume.
fn no_trace_of(store: &Path, wrong: &[u8], wrong_layer: &str) {
    let hex = wrong_layer.strip_prefix("sha256:").unwrap();
    assert!(!store.join("blobs/sha256").join(hex).exists(), "the layer of the wrong bytes entered the store");
    assert!(!layer_records(store).iter().any(|l| l == wrong_layer), "a layer record names it");
    assert!(!store.join("blobs/sha256").join(fixtures::sha256_hex(wrong)).exists(), "the wrong source was kept");
    let left: Vec<String> = files(store, "tmp").into_iter().filter(|f| !f.starts_with("partial-")).collect();
    assert!(left.is_empty(), "left in tmp/: {left:?}");
}

/// A directory `name` holding the project's inputs, with `zookeeper` as ZooKeeper's (none: left out).
fn mirror_dir(p: &TestProject, name: &str, zookeeper: Option<&[u8]>) -> PathBuf {
    let dir = p.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, bytes) in &p.inputs {
        match (file.as_str(), zookeeper) {
            (ZOOKEEPER, Some(other)) => std::fs::write(dir.join(file), other).unwrap(),
            (ZOOKEEPER, None) => {}
            _ => std::fs::write(dir.join(file), bytes).unwrap(),
        }
    }
    dir
}

/// A store of its own at `name`, holding the base image.
fn store_with_base(p: &TestProject, name: &str) -> PathBuf {
    let store = p.path(name);
    assert_ok(&on_store(p, &store).args(["store", "add", p.base_layout.to_str().unwrap()]).output().unwrap());
    store
}

#[test]
fn a_download_that_does_not_match_its_pin_leaves_no_layer_record_and_no_blob() {
    let p = TestProject::new();
    let wrong = other_zookeeper();
    let wrong_layer = layer_of(&p, &wrong, &p.path("reference-store"));
    let absent = |store: &Path| no_trace_of(store, &wrong, &wrong_layer);
    // The only server with the file has other bytes.
    p.server.serve(&format!("dist/{ZOOKEEPER}"), wrong.clone(), Fault::None);
    p.server.serve(&format!("mirror/{ZOOKEEPER}"), Vec::new(), Fault::NotFound);
    p.add_base();
    let out = p.run(&["build"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("hash mismatch"), "{err}");
    let discarded =
        "layer zookeeper: the work done while downloading is discarded: the download is not the pinned source";
    assert!(err.contains(discarded), "the layer was being built from the download: {err}");
    absent(&p.store);
    // The other inputs were the pinned bytes: their layers were built while they downloaded.
    assert!(err.contains("layer kafka: built while downloading"), "{err}");
    assert_ok(&p.run(&["store", "verify"]));

    // Other bytes first, the pinned ones from the mirror next: the work on the first is
    // discarded, and the layer is the pinned source's.
    p.server.serve(&format!("mirror/{ZOOKEEPER}"), p.input(ZOOKEEPER).to_vec(), Fault::None);
    let out = p.run(&["build", "--format", "oci-archive", "--out", "mirrored.tar"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("layer zookeeper: the work done while downloading is discarded"), "{}", stderr(&out));
    absent(&p.store);
    let clean = p.path("clean-store");
    assert_ok(&on_store(&p, &clean).args(["store", "add", p.base_layout.to_str().unwrap()]).output().unwrap());
    p.server.serve(&format!("dist/{ZOOKEEPER}"), p.input(ZOOKEEPER).to_vec(), Fault::None);
    assert_ok(&on_store(&p, &clean).args(["build", "--format", "oci-archive", "--out", "clean.tar"]).output().unwrap());
    same_file(&p.root.join("mirrored.tar"), &p.root.join("clean.tar"));
}

#[test]
fn a_download_resumed_after_a_dropped_connection_builds_the_same_layer() {
    let p = TestProject::new();
    p.add_base();
    let data = p.input(ZOOKEEPER).to_vec();
    p.server.serve(&format!("dist/{ZOOKEEPER}"), data.clone(), Fault::Truncate { after: data.len() / 2, times: 1 });
    let out = p.run(&["build", "--format", "oci-archive", "--out", "resumed.tar"]);
    assert_ok(&out);
    let requests = p.server.requests(&format!("dist/{ZOOKEEPER}"));
    assert_eq!(requests, vec![None, Some(format!("bytes={}-", data.len() / 2))], "resumed with a range");
    assert!(stderr(&out).contains("layer zookeeper: built while downloading"), "{}", stderr(&out));

    // The same project from files already at hand (a --mirror directory): no download at all.
    let mirror: PathBuf = p.path("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    for (name, bytes) in &p.inputs {
        std::fs::write(mirror.join(name), bytes).unwrap();
    }
    let clean = p.path("clean-store");
    assert_ok(&on_store(&p, &clean).args(["store", "add", p.base_layout.to_str().unwrap()]).output().unwrap());
    let from_files = on_store(&p, &clean)
        .args(["--offline", "--mirror", mirror.to_str().unwrap(), "--json", "build", "--format", "oci-archive"])
        .args(["--out", "clean.tar"])
        .output()
        .unwrap();
    assert_eq!(json(&from_files)["layers_built"], 3);
    same_file(&p.root.join("resumed.tar"), &p.root.join("clean.tar"));
}

#[test]
fn layers_are_built_while_their_sources_download_and_counted_as_built() {
    let p = TestProject::new();
    p.add_base();
    for (name, data) in &p.inputs {
        // Slow enough that the download outlasts the layer work it feeds.
        p.server.serve(&format!("dist/{name}"), data.clone(), Fault::Slow { pause_ms: 20 });
    }
    let out = p.run(&["build"]);
    assert_ok(&out);
    let err = stderr(&out);
    for recipe in ["temurin-jdk8", "zookeeper", "kafka"] {
        assert!(err.contains(&format!("layer {recipe}: built while downloading")), "{recipe}: {err}");
    }
    let v = json(&p.run(&["--json", "build"]));
    assert_eq!(v["layers_built"], 0, "recorded: a second build does no layer work");
    let fresh = p.path("fresh-store");
    assert_ok(&on_store(&p, &fresh).args(["store", "add", p.base_layout.to_str().unwrap()]).output().unwrap());
    let v = json(&on_store(&p, &fresh).args(["--json", "build", "--out", "out/fresh"]).output().unwrap());
    assert_eq!(v["layers_built"], 3, "{v}");
}

#[test]
fn a_mirror_file_that_does_not_match_its_pin_leaves_no_layer_and_the_next_mirror_or_url_serves() {
    let p = TestProject::new();
    let wrong = other_zookeeper();
    let wrong_layer = layer_of(&p, &wrong, &p.path("reference-store"));
    let bad = mirror_dir(&p, "bad-mirror", Some(&wrong));
    let good = mirror_dir(&p, "good-mirror", Some(p.input(ZOOKEEPER)));
    let (bad, good) = (bad.to_str().unwrap(), good.to_str().unwrap());
    let copying = |recipe: &str| format!("layer {recipe}: built while copying from the mirror");
    let discarded = "layer zookeeper: the work done while copying from the mirror is discarded: the mirror's file is not the pinned source";

    // The only mirror has other bytes, and the build is offline: the mismatch names the file.
    let store = store_with_base(&p, "store-bad");
    let out = on_store(&p, &store).args(["--offline", "--mirror", bad, "build"]).output().unwrap();
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("hash mismatch") && err.contains(&format!("bad-mirror/{ZOOKEEPER}")), "{err}");
    assert!(err.contains(discarded), "the layer was being built from the copy: {err}");
    assert!(err.contains(&copying("kafka")), "the pinned inputs' layers were built as they were copied: {err}");
    no_trace_of(&store, &wrong, &wrong_layer);
    assert_ok(&on_store(&p, &store).args(["store", "verify"]).output().unwrap());

    // The next mirror directory has the pinned bytes: the layer is built as they are copied.
    let store = store_with_base(&p, "store-next-mirror");
    let out = on_store(&p, &store)
        .args(["--offline", "--mirror", bad, "--mirror", good, "build", "--format", "oci-archive"])
        .args(["--out", "next-mirror.tar"])
        .output()
        .unwrap();
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains(discarded) && err.contains(&copying("zookeeper")), "{err}");
    no_trace_of(&store, &wrong, &wrong_layer);

    // No other mirror, but the URL has them: downloaded, and that layer built as it downloads.
    let store = store_with_base(&p, "store-url");
    let out = on_store(&p, &store)
        .args(["--mirror", bad, "build", "--format", "oci-archive", "--out", "url.tar"])
        .output()
        .unwrap();
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains(discarded) && err.contains("layer zookeeper: built while downloading"), "{err}");
    assert_eq!(p.server.requests(&format!("dist/{ZOOKEEPER}")).len(), 1, "only ZooKeeper was downloaded");
    no_trace_of(&store, &wrong, &wrong_layer);

    // Byte for byte the build of the same files added with `store add` and built offline, whose
    // layers are built from the store after the fetch.
    let store = store_with_base(&p, "store-added");
    for (file, _) in &p.inputs {
        let added = on_store(&p, &store).args(["store", "add"]).arg(Path::new(good).join(file)).output().unwrap();
        assert_ok(&added);
    }
    let out = on_store(&p, &store)
        .args(["--offline", "--json", "build", "--format", "oci-archive", "--out", "added.tar"])
        .output()
        .unwrap();
    assert_eq!(json(&out)["layers_built"], 3);
    for other in ["next-mirror.tar", "url.tar"] {
        same_file(&p.root.join(other), &p.root.join("added.tar"));
    }
}

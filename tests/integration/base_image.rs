//! A build fetches its pinned base image itself, like any tarball (issue #12 item 1, #17): from
//! a real registry, from registry mirrors when the first fails, resumed after a dropped
//! connection, and offline from a `--mirror` directory holding an oci-archive or OCI layout.

use std::path::Path;
use std::process::Command;

use super::harness::*;
use super::registry_server::{require, CuttingProxy, Registry};

/// The amd64 base image's manifest digest and its one layer's digest.
pub(super) fn base(p: &TestProject) -> (String, String) {
    let digest = p.base_digests.iter().find(|(a, _)| a == "amd64").unwrap().1.clone();
    let manifest = p.base_layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    (digest, manifest["layers"][0]["digest"].as_str().unwrap().to_string())
}

/// Copies the amd64 base image into `repository` (HOST/PATH) of a plain-HTTP registry, with skopeo.
pub(super) fn push_base(p: &TestProject, repository: &str) {
    require("skopeo");
    tool(
        Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:bookworm-amd64", p.base_layout.display()))
            .arg(format!("docker://{repository}:bookworm")),
    );
}

/// The base recipe, fetched from `image` and then `mirrors`, or found as `file` in a mirror directory.
pub(super) fn base_recipe(p: &TestProject, image: &str, mirrors: &[String], file: Option<&str>) {
    let (digest, _) = base(p);
    let mirrors: Vec<String> = mirrors.iter().map(|m| format!("\"{m}\"")).collect();
    let file = file.map(|f| format!("file = \"{f}\"\n")).unwrap_or_default();
    p.write_recipe(
        "debian-bookworm-slim.toml",
        &format!(
            "name = \"debian-bookworm-slim\"\nversion = \"test\"\nkind = \"oci-image\"\nimage = \"{image}\"\nmirrors = [{}]\n\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"{digest}\"\n{file}",
            mirrors.join(", ")
        ),
    );
}

/// The digest of the first layer of node 0's image in the OCI layout `out`.
fn first_layer(out: &Path) -> String {
    let read = |p: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let index = read(&out.join("index.json"));
    let manifest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    read(&out.join("blobs/sha256").join(manifest))["layers"][0]["digest"].as_str().unwrap().to_string()
}

#[test]
fn build_fetches_a_pinned_base_from_its_registry_with_no_pull() {
    let p = TestProject::new();
    let registry = Registry::plain(&p.path("registry"));
    let repository = format!("{}/library/base", registry.host());
    push_base(&p, &repository);
    base_recipe(&p, &repository, &[], None);
    assert_ok(&p.run(&["check"]));

    // A plain-HTTP registry is refused until the user says it may be spoken to that way; the
    // other inputs are fetched meanwhile, with one progress line each, each whole.
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("--insecure-registry"), "{err}");
    let fetches: Vec<&str> = err.lines().filter(|l| l.starts_with("fetch ")).collect();
    assert_eq!(fetches.len(), 4, "three tarballs and the base image: {err}");
    assert!(fetches.contains(&"fetch debian-bookworm-slim (linux/amd64)"), "{fetches:?}");

    assert_ok(&p.run(&["--insecure-registry", &registry.host(), "build"]));
    assert_eq!(first_layer(&p.root.join("out/zk-kafka")), base(&p).1, "the base's layer comes first");
    assert_ok(&p.run(&["store", "verify"]));
    // It is in the store now: offline builds use it.
    assert_ok(&p.run(&["--offline", "build"]));
}

#[test]
fn registry_mirrors_serve_the_base_when_the_first_registry_fails_and_a_cut_download_resumes() {
    let p = TestProject::new();
    let empty = Registry::plain(&p.path("empty"));
    let full = Registry::plain(&p.path("full"));
    push_base(&p, &format!("{}/mirror/base", full.host()));
    push_base(&p, &format!("{}/hub/library/base", full.host()));
    let upstream = format!("{}/library/base", empty.host());
    let insecure = format!("{},{}", empty.host(), full.host());

    // The recipe's own mirrors, after its `image`; the first blob download is cut in half.
    let proxy = CuttingProxy::start(full.addr);
    base_recipe(&p, &upstream, &[format!("{}/mirror/base", proxy.addr)], None);
    let insecure_all = format!("{insecure},{}", proxy.addr);
    let out = p.cmd().env("IMGBUILD_INSECURE_REGISTRY", &insecure_all).args(["--json", "node", "--id", "0"]).output();
    json(&out.unwrap());
    let ranges = proxy.blob_ranges.lock().unwrap().clone();
    assert!(ranges.len() >= 3 && ranges[0].is_none(), "{ranges:?}");
    assert!(ranges[1].as_deref().is_some_and(|r| r.starts_with("bytes=")), "the second request resumes: {ranges:?}");

    // `--registry-mirror HOST=MIRROR/PREFIX`, before the registry it stands for.
    base_recipe(&p, &upstream, &[], None);
    let fresh = p.path("store2");
    let mirror = format!("{}={}/hub", empty.host(), full.host());
    let args = ["--store", fresh.to_str().unwrap(), "--insecure-registry", &insecure, "--registry-mirror", &mirror];
    assert_ok(&p.cmd().args(args).args(["node", "--id", "0"]).output().unwrap());

    // Every place fails: exit 3, each place tried listed, and a next step that works anywhere.
    let none = p.path("store3");
    let args = ["--store", none.to_str().unwrap(), "--insecure-registry", &insecure, "node", "--id", "0"];
    let out = p.cmd().args(args).output().unwrap();
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains(&format!("tried: docker://{upstream}@sha256:")) && err.contains("has no manifest"), "{err}");
    assert!(err.contains("add it: imgbuild store add debian-bookworm-slim.tar"), "{err}");
}

#[test]
fn offline_a_mirror_directory_supplies_the_base_as_an_archive_or_a_layout() {
    require("skopeo");
    let p = TestProject::new();
    let mirror = p.path("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    for (name, data) in &p.inputs {
        std::fs::write(mirror.join(name), data).unwrap();
    }
    let offline = |store: &str| {
        let store = p.path(store);
        let args = ["--offline", "--store", store.to_str().unwrap(), "node", "--id", "0"];
        let out = p.cmd().env("IMGBUILD_MIRROR", &mirror).args(args).output().unwrap();
        (out, store)
    };
    // Nothing there yet: the entry names the file to put in the mirror directory.
    base_recipe(&p, "registry.example.org/library/base", &[], None);
    let (out, _) = offline("store0");
    assert_exit(&out, 3);
    assert!(stderr(&out).contains(&format!("{}: not there", mirror.join("debian-bookworm-slim.tar").display())));

    // The default name: an oci-archive named after the recipe, as skopeo writes it.
    tool(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:bookworm-amd64", p.base_layout.display()))
            .arg(format!("oci-archive:{}", mirror.join("debian-bookworm-slim.tar").display())),
    );
    let (out, store) = offline("store1");
    assert_ok(&out);
    assert_eq!(first_layer(&p.root.join("out/zk-kafka-node-0")), base(&p).1);
    assert!(store.join("blobs/sha256").join(base(&p).1.trim_start_matches("sha256:")).is_file());

    // A recipe's `file`: here an OCI layout directory. `check` accepts it and `build` uses it.
    copy_dir(&p.base_layout, &mirror.join("base-layout"));
    base_recipe(&p, "registry.example.org/library/base", &[], Some("base-layout"));
    assert_ok(&p.run(&["check"]));
    let (out, _) = offline("store2");
    assert_ok(&out);

    // A file named as the recipe's `file` that holds no image it pins is bad input (exit 1),
    // naming what it holds; nothing of it is imported.
    std::fs::remove_dir_all(mirror.join("base-layout")).unwrap();
    let other = p.path("other");
    let held = super::fixtures::base_layout(&other, &["arm64"]);
    copy_dir(&other, &mirror.join("base-layout"));
    let (out, store) = offline("store3");
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("holds no image for a platform the recipe pins") && err.contains(&held[0].1), "{err}");
    assert!(!store.join("blobs/sha256").join(held[0].1.trim_start_matches("sha256:")).exists());
}

/// Rewrites the single image of the OCI layout `dir`: `edit` changes its manifest and config,
/// then both are stored again under their new digests. Returns the new manifest digest.
fn edit_image(dir: &Path, edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value)) -> String {
    let blob = |digest: &str| dir.join("blobs/sha256").join(&digest[7..]);
    let read =
        |digest: &str| serde_json::from_slice::<serde_json::Value>(&std::fs::read(blob(digest)).unwrap()).unwrap();
    let put = |doc: &serde_json::Value| {
        let bytes = doc.to_string().into_bytes();
        let digest = format!("sha256:{}", super::fixtures::sha256_hex(&bytes));
        std::fs::write(blob(&digest), &bytes).unwrap();
        (digest, bytes.len())
    };
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    edit(&mut manifest, &mut config);
    let (config_digest, config_size) = put(&config);
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_size.into();
    let (manifest_digest, manifest_size) = put(&manifest);
    index["manifests"][0]["digest"] = manifest_digest.clone().into();
    index["manifests"][0]["size"] = manifest_size.into();
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    manifest_digest
}

/// A change to an image's manifest and config.
type ImageEdit = dyn Fn(&mut serde_json::Value, &mut serde_json::Value);

/// A base layer is used only when its content is what the image's config says (its diff_id,
/// decompressed as its media type says), as runtimes check on pull and load; the layer count
/// of config and manifest must agree. Each is a bad input (exit 1) naming the layer and both
/// values; an honest base builds, and is checked once per store.
#[test]
fn a_base_layer_whose_content_is_not_its_diff_id_is_refused() {
    let p = TestProject::new();
    let layer = || super::fixtures::tar(&[super::fixtures::Entry::Dir("etc/")]);
    let cases: [(&str, Box<ImageEdit>, &str); 3] = [
        (
            "zero diff_id",
            Box::new(|_, config| config["rootfs"]["diff_ids"][0] = format!("sha256:{}", "0".repeat(64)).into()),
            "its content hashes to sha256:",
        ),
        (
            "gzip that is a tar",
            Box::new(|manifest, _| {
                manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into()
            }),
            "says an uncompressed tar, its content is gzip",
        ),
        (
            "one diff_id too many",
            Box::new(|_, config| {
                let extra = config["rootfs"]["diff_ids"][0].clone();
                config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(extra);
            }),
            "its config lists 2 layer diff_ids, its manifest 1 layers",
        ),
    ];
    for (i, (what, edit, expected)) in cases.iter().enumerate() {
        let dir = p.path(&format!("base-{i}"));
        super::fixtures::layered_layout(&dir, &[layer()]);
        let digest = edit_image(&dir, edit);
        p.write_recipe(
            "debian-bookworm-slim.toml",
            &format!("name = \"debian-bookworm-slim\"\nversion = \"test\"\nkind = \"oci-image\"\n\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"{digest}\"\n"),
        );
        assert_ok(&p.run(&["store", "add", dir.to_str().unwrap()]));
        let out = p.run(&["build", "--platform", "linux/amd64", "--out", &format!("out/{i}")]);
        assert_exit(&out, 1);
        assert!(stderr(&out).contains(&format!("base image {digest}")), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{what}: {}", stderr(&out));
        assert!(!p.root.join(format!("out/{i}")).exists(), "{what}: nothing written");
    }
    // The honest one builds; its check is noted, and a second build does not read it again.
    let honest = p.path("honest");
    let digest = super::fixtures::layered_layout(&honest, &[layer()]);
    p.write_recipe(
        "debian-bookworm-slim.toml",
        &format!("name = \"debian-bookworm-slim\"\nversion = \"test\"\nkind = \"oci-image\"\n\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"{digest}\"\n"),
    );
    assert_ok(&p.run(&["store", "add", honest.to_str().unwrap()]));
    assert_ok(&p.run(&["build", "--platform", "linux/amd64", "--out", "out/honest"]));
    assert_eq!(tree(&p.store.join("diff_ids")).len(), 1);
}

/// An image manifest that names a subject (OCI 1.1) is still an image: it can be a base, on
/// the first run as on any other. A manifest carrying an artifact is a referrer, never a base.
#[test]
fn an_image_manifest_with_a_subject_is_an_image_and_an_artifact_is_not() {
    let p = TestProject::new();
    let layer = super::fixtures::tar(&[super::fixtures::Entry::Dir("etc/")]);
    let subject = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "a".repeat(64)), "size": 1
    });
    let image = p.path("with-subject");
    super::fixtures::layered_layout(&image, std::slice::from_ref(&layer));
    let digest = edit_image(&image, |manifest, _| manifest["subject"] = subject.clone());
    let recipe = |digest: &str| {
        format!("name = \"debian-bookworm-slim\"\nversion = \"test\"\nkind = \"oci-image\"\n\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"{digest}\"\n")
    };
    p.write_recipe("debian-bookworm-slim.toml", &recipe(&digest));
    assert_ok(&p.run(&["store", "add", image.to_str().unwrap()]));
    assert_ok(&p.run(&["build", "--platform", "linux/amd64", "--out", "out/subject"]));

    let artifact = p.path("artifact");
    super::fixtures::layered_layout(&artifact, &[layer]);
    let artifact_digest = edit_image(&artifact, |manifest, _| {
        manifest["subject"] = subject.clone();
        manifest["artifactType"] = "application/example+json".into();
    });
    let out = p.run(&["store", "add", artifact.to_str().unwrap()]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("holds no image manifest"), "{}", stderr(&out));
    // Pinned as a base, it is refused on every run alike, whatever an earlier run left in the
    // store (attacker round 2: the second run built from the refused archive's blobs).
    p.write_recipe("debian-bookworm-slim.toml", &recipe(&artifact_digest));
    let mirror = p.path("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    for run in 0..2 {
        let out = p.run(&[
            "--mirror",
            mirror.to_str().unwrap(),
            "build",
            "--platform",
            "linux/amd64",
            "--out",
            "out/artifact",
        ]);
        assert_ne!(out.status.code(), Some(0), "run {run}: {}", stderr(&out));
        if run == 1 {
            assert_exit(&out, 1);
            assert!(
                stderr(&out).contains("is an artifact (`application/example+json`), not an image"),
                "{}",
                stderr(&out)
            );
        }
    }
}

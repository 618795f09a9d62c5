//! Issue #14: every image carries its SBOMs and provenance as OCI 1.1 referrers, the formats'
//! own validators accept them, and `imgbuild verify` rebuilds an image from its provenance:
//! it passes on what imgbuild built (from a layout, an archive, a registry) and names what
//! differs on what was changed.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

use super::harness::*;
use super::registry_server::{require, Registry};

const SPDX: &str = "application/spdx+json";
const CYCLONEDX: &str = "application/vnd.cyclonedx+json";
const IN_TOTO: &str = "application/vnd.in-toto+json";

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

/// The digest a layout's tag points at.
fn tagged(layout: &Path, tag: &str) -> String {
    let index = read_json(&layout.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag);
    entry.unwrap_or_else(|| panic!("no tag {tag}")).digest_str()
}

trait DigestStr {
    fn digest_str(&self) -> String;
}

impl DigestStr for serde_json::Value {
    fn digest_str(&self) -> String {
        self["digest"].as_str().unwrap().to_string()
    }
}

/// The artifact manifests a layout lists: (artifactType, manifest digest, subject digest).
fn referrers(layout: &Path) -> Vec<(String, String, String)> {
    let index = read_json(&layout.join("index.json"));
    let mut out = Vec::new();
    for m in index["manifests"].as_array().unwrap() {
        let Some(kind) = m["artifactType"].as_str() else { continue };
        let manifest = read_json(&blob(layout, &m.digest_str()));
        assert_eq!(manifest["artifactType"], kind, "the index and the manifest agree");
        assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
        assert_eq!(
            manifest["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
        out.push((kind.to_string(), m.digest_str(), manifest["subject"].digest_str()));
    }
    out
}

fn stdout(out: &std::process::Output) -> String {
    assert_ok(out);
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn every_image_carries_sboms_and_provenance_that_validate_and_verify() {
    let p = TestProject::new();
    p.add_base();
    assert_ok(&p.run(&["build"]));
    let layout = p.root.join("out/zk-kafka");

    // Three documents per image (one platform): two SBOMs and the provenance, attached to it.
    let attached = referrers(&layout);
    for tag in ["cluster", "node-0", "node-1", "node-2"] {
        let digest = tagged(&layout, tag);
        let mut kinds: Vec<&str> =
            attached.iter().filter(|(_, _, s)| *s == digest).map(|(k, _, _)| k.as_str()).collect();
        kinds.sort();
        assert_eq!(kinds, [SPDX, CYCLONEDX, IN_TOTO], "{tag}");
    }
    assert_eq!(attached.len(), 12);

    // The SPDX SBOM: the image by digest, one package per recipe as pinned, the base by digest.
    let spdx_text = stdout(&p.run(&["sbom", "oci:out/zk-kafka:node-1"]));
    let spdx: serde_json::Value = serde_json::from_str(&spdx_text).unwrap();
    assert_eq!(spdx["spdxVersion"], "SPDX-2.3");
    assert_eq!(spdx["creationInfo"]["created"], "1970-01-01T00:00:00Z");
    let packages = spdx["packages"].as_array().unwrap();
    let node1 = tagged(&layout, "node-1");
    assert_eq!(packages[0]["checksums"][0]["checksumValue"], node1.trim_start_matches("sha256:"));
    let zk = packages.iter().find(|p| p["name"] == "zookeeper").unwrap();
    assert_eq!(zk["checksums"][0]["checksumValue"], super::fixtures::sha256_hex(p.input("zookeeper-3.4.10.tar.gz")));
    // SPDX's URL grammar has no place for a loopback address: the URL is in the purl and sourceInfo.
    assert_eq!(zk["downloadLocation"], "NOASSERTION");
    assert_eq!(zk["sourceInfo"], format!("downloaded from {}", p.server.url("dist/zookeeper-3.4.10.tar.gz")));
    let kafka = packages.iter().find(|p| p["name"] == "kafka").unwrap();
    assert_eq!(kafka["checksums"][0]["algorithm"], "SHA512");
    let purls: Vec<&str> =
        packages.iter().map(|p| p["externalRefs"][0]["referenceLocator"].as_str().unwrap()).collect();
    let base = p.base_digests.iter().find(|(a, _)| a == "amd64").unwrap().1.replace(':', "%3A");
    assert!(
        purls.contains(&format!("pkg:oci/base@{base}?repository_url=example.invalid/test/base").as_str()),
        "{purls:?}"
    );
    assert!(purls.iter().any(|u| u.starts_with("pkg:generic/temurin-jdk8@8u392-b08?checksum=sha256:")), "{purls:?}");
    assert!(!spdx_text.contains(p.tmp.path().to_str().unwrap()), "no path of the build machine");

    // Both formats pass their own validators.
    let spdx_file = p.path("sbom.spdx.json");
    std::fs::write(&spdx_file, &spdx_text).unwrap();
    tool(Command::new(tool_path("pyspdxtools")).arg("-i").arg(&spdx_file));
    let cdx = stdout(&p.run(&["sbom", "--format", "cyclonedx", "oci:out/zk-kafka:node-1"]));
    validate_cyclonedx(&p, &cdx);

    // The provenance: subject, options that change bytes, every input by URL and hash.
    let (_, statement, _) = attached.iter().find(|(k, _, s)| k == IN_TOTO && *s == node1).unwrap().clone();
    let statement = read_json(&blob(&layout, &read_json(&blob(&layout, &statement))["layers"][0].digest_str()));
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], node1.trim_start_matches("sha256:"));
    let build = &statement["predicate"]["buildDefinition"];
    assert_eq!(build["externalParameters"]["node"], 1);
    assert_eq!(build["externalParameters"]["level"], 1);
    let deps = build["resolvedDependencies"].as_array().unwrap();
    assert!(deps.iter().any(|d| d["name"] == "images/zk-kafka.toml" && d["content"].is_string()));
    assert!(deps.iter().any(|d| d["name"] == "images/zk-kafka/zoo.cfg"), "templates are carried: {deps:?}");
    assert!(deps
        .iter()
        .any(|d| d["uri"] == p.server.url("dist/kafka_2.11-1.0.0.tgz") && d["digest"]["sha512"].is_string()));

    // Byte-reproducible: a second build in another store writes the same documents.
    let other = p.path("store2");
    assert_ok(&p.cmd().env("IMGBUILD_STORE", &other).args(["store", "add"]).arg(&p.base_layout).output().unwrap());
    let out = p.cmd().env("IMGBUILD_STORE", &other).args(["build", "--out", "out/again"]).output().unwrap();
    assert_ok(&out);
    assert_eq!(
        std::fs::read(layout.join("index.json")).unwrap(),
        std::fs::read(p.root.join("out/again/index.json")).unwrap()
    );

    // skopeo copies the image itself, unchanged.
    require_tool("skopeo");
    let copy = p.path("copy");
    tool(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:node-1", layout.display()))
            .arg(format!("oci:{}:node-1", copy.display())),
    );
    assert_eq!(tagged(&copy, "node-1"), node1);

    // verify: rebuilt from the provenance alone, every digest matches.
    let out = p.run(&["verify", "oci:out/zk-kafka:node-1"]);
    assert!(stdout(&out).starts_with(&node1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is node 1 of `zk-kafka`"), "{}", stderr(&out));
}

fn validate_cyclonedx(p: &TestProject, text: &str) {
    let file = p.path("sbom.cdx.json");
    std::fs::write(&file, text).unwrap();
    let script = "import sys\nfrom cyclonedx.schema import SchemaVersion\nfrom cyclonedx.validation.json import JsonStrictValidator\n\
errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())\n\
if errors:\n    print(errors)\n    sys.exit(1)\n";
    tool(Command::new(tool_path("cyclonedx-validator")).arg("-c").arg(script).arg(&file));
}

/// Writes `data` as a blob of the layout; returns its digest.
fn put(layout: &Path, data: &[u8]) -> String {
    let digest = format!("sha256:{}", super::fixtures::sha256_hex(data));
    std::fs::write(blob(layout, &digest), data).unwrap();
    digest
}

/// Edits a layout's `index.json`.
fn edit_index(layout: &Path, f: impl FnOnce(&mut Vec<serde_json::Value>)) {
    let path = layout.join("index.json");
    let mut index = read_json(&path);
    f(index["manifests"].as_array_mut().unwrap());
    std::fs::write(&path, index.to_string()).unwrap();
}

/// Points `tag` at `digest` (size `size`).
fn retag(layout: &Path, tag: &str, digest: &str, size: usize) {
    edit_index(layout, |entries| {
        let e = entries.iter_mut().find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag).unwrap();
        e["digest"] = digest.into();
        e["size"] = size.into();
    });
}

/// The provenance statement attached to `subject` in `layout`.
fn statement_of(layout: &Path, subject: &str) -> serde_json::Value {
    let (_, artifact, _) = referrers(layout).into_iter().find(|(k, _, s)| k == IN_TOTO && s == subject).unwrap();
    read_json(&blob(layout, &read_json(&blob(layout, &artifact))["layers"][0].digest_str()))
}

/// What someone passing off `subject` as something else would do: take away its provenance and
/// attach `statement` instead, its subject rewritten to `claims` (by default, `subject`).
fn attach_statement(layout: &Path, subject: &str, mut statement: serde_json::Value, claims: Option<&str>) {
    statement["subject"][0]["digest"]["sha256"] = claims.unwrap_or(subject).trim_start_matches("sha256:").into();
    attach(layout, subject, IN_TOTO, &statement);
}

/// Replaces the `kind` documents attached to `subject` with `document`.
fn attach(layout: &Path, subject: &str, kind: &str, document: &serde_json::Value) {
    let text = document.to_string();
    let document = put(layout, text.as_bytes());
    let size = std::fs::metadata(blob(layout, subject)).unwrap().len();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": kind,
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2 },
        "layers": [{ "mediaType": kind, "digest": document, "size": text.len() }],
        "subject": { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": size },
    });
    let bytes = manifest.to_string();
    let digest = put(layout, bytes.as_bytes());
    let old: Vec<String> =
        referrers(layout).into_iter().filter(|(k, _, s)| k == kind && s == subject).map(|(_, d, _)| d).collect();
    edit_index(layout, |entries| {
        entries.retain(|m| !old.contains(&m.digest_str()));
        entries.push(serde_json::json!({ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": bytes.len(), "artifactType": kind }));
    });
}

/// Replaces `path`'s content in the layer of node `tag` that holds it: a new layer, config and
/// manifest, consistent with each other, and `tag` pointed at them. Returns the new manifest.
fn change_file(layout: &Path, tag: &str, path: &str, content: &[u8]) -> String {
    let manifest_digest = tagged(layout, tag);
    let mut manifest = read_json(&blob(layout, &manifest_digest));
    let mut config = read_json(&blob(layout, &manifest["config"].digest_str()));
    let layers = manifest["layers"].as_array().unwrap().clone();
    let (n, raw) = layers
        .iter()
        .enumerate()
        .find_map(|(n, l)| {
            let gz = std::fs::read(blob(layout, &l.digest_str())).unwrap();
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
            let mut archive = tar::Archive::new(&raw[..]);
            let holds = archive.entries().unwrap().any(|e| e.unwrap().path().unwrap().to_str() == Some(path));
            holds.then_some((n, raw))
        })
        .unwrap_or_else(|| panic!("no layer of {tag} holds {path}"));
    let mut out = tar::Builder::new(Vec::new());
    for entry in tar::Archive::new(&raw[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        if entry.path().unwrap().to_str() == Some(path) {
            header.set_size(content.len() as u64);
            header.set_cksum();
            out.append(&header, content).unwrap();
        } else {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            out.append(&header, &data[..]).unwrap();
        }
    }
    let raw = out.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let gz = gz.finish().unwrap();
    manifest["layers"][n]["digest"] = put(layout, &gz).into();
    manifest["layers"][n]["size"] = gz.len().into();
    config["rootfs"]["diff_ids"][n] = format!("sha256:{}", super::fixtures::sha256_hex(&raw)).into();
    let config_bytes = config.to_string();
    manifest["config"]["digest"] = put(layout, config_bytes.as_bytes()).into();
    manifest["config"]["size"] = config_bytes.len().into();
    let bytes = manifest.to_string();
    let digest = put(layout, bytes.as_bytes());
    retag(layout, tag, &digest, bytes.len());
    digest
}

/// `verify`'s exit code and what it said.
fn verify(p: &TestProject, image: &str) -> (Option<i32>, String) {
    let out = p.run(&["verify", image]);
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    (out.status.code(), stderr(&out))
}

#[test]
fn verify_names_the_file_the_level_or_the_node_that_differs() {
    let p = TestProject::new();
    p.add_base();
    assert_ok(&p.run(&["build"]));
    let built = p.root.join("out/zk-kafka");
    let fresh = |name: &str| {
        let dir = p.path(name);
        copy_dir(&built, &dir);
        dir
    };

    // A layer changed, its image made consistent again and the provenance re-attached to it.
    let changed = fresh("changed");
    let node1 = tagged(&changed, "node-1");
    let statement = statement_of(&changed, &node1);
    let tampered = change_file(&changed, "node-1", "usr/local/zookeeper/bin/zkServer.sh", b"#!/bin/sh\nevil\n");
    attach_statement(&changed, &tampered, statement.clone(), None);
    let (code, err) = verify(&p, &format!("oci:{}:node-1", changed.display()));
    assert_eq!(code, Some(7), "{err}");
    assert!(err.contains("layer 3 of 7 (imgbuild recipe zookeeper 3.4.10"), "{err}");
    assert!(err.contains("`usr/local/zookeeper/bin/zkServer.sh`: the content differs"), "{err}");

    // Built with another --level than its provenance says.
    assert_ok(&p.run(&["build", "--level", "9", "--out", "out/level9"]));
    let level9 = p.root.join("out/level9");
    assert_ok(&p.run(&["verify", "oci:out/level9:node-1"]));
    attach_statement(&level9, &tagged(&level9, "node-1"), statement.clone(), None);
    let (code, err) = verify(&p, "oci:out/level9:node-1");
    assert_eq!(code, Some(7), "{err}");
    assert!(err.contains("layer 2 of 7 (imgbuild recipe temurin-jdk8"), "{err}");
    assert!(err.contains("the same files and the same tar stream, compressed differently"), "{err}");

    // node-1's tag on node 2's manifest: its own provenance names another subject; node 1's
    // provenance re-attached to it rebuilds node 1, whose identity layer differs.
    let swapped = fresh("swapped");
    let node2 = tagged(&swapped, "node-2");
    let size = std::fs::metadata(blob(&swapped, &node2)).unwrap().len() as usize;
    retag(&swapped, "node-1", &node2, size);
    attach_statement(&swapped, &node2, statement.clone(), Some(&node1));
    let (code, err) = verify(&p, &format!("oci:{}:node-1", swapped.display()));
    assert_eq!(code, Some(7), "{err}");
    assert!(err.contains("names another image as its subject"), "{err}");
    attach_statement(&swapped, &node2, statement.clone(), None);
    let (code, err) = verify(&p, &format!("oci:{}:node-1", swapped.display()));
    assert_eq!(code, Some(7), "{err}");
    assert!(
        err.contains("layer 7 of 7 (imgbuild identity of node 1) differs: `etc/imgbuild/node-id`: the content differs"),
        "{err}"
    );

    // A provenance whose carried files do not hash to what it records is refused outright.
    let forged = fresh("forged");
    let mut bad = statement.clone();
    let deps = bad["predicate"]["buildDefinition"]["resolvedDependencies"].as_array_mut().unwrap();
    let zk = deps.iter_mut().find(|d| d["name"] == "recipes/zookeeper.toml").unwrap();
    zk["content"] = base64::engine::general_purpose::STANDARD.encode(b"name = \"zookeeper\"\n").into();
    attach_statement(&forged, &node1, bad, None);
    let (code, err) = verify(&p, &format!("oci:{}:node-1", forged.display()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`recipes/zookeeper.toml`: the content carried does not hash"), "{err}");

    // An SBOM that says other than the rebuild's: the first field that differs is named.
    let sbom_edited = fresh("sbom-edited");
    let mut spdx: serde_json::Value =
        serde_json::from_str(&stdout(&p.run(&["sbom", "oci:out/zk-kafka:node-1"]))).unwrap();
    let zk = spdx["packages"].as_array_mut().unwrap().iter_mut().find(|p| p["name"] == "zookeeper").unwrap();
    zk["versionInfo"] = "3.9.9".into();
    attach(&sbom_edited, &node1, SPDX, &spdx);
    let (code, err) = verify(&p, &format!("oci:{}:node-1", sbom_edited.display()));
    assert_eq!(code, Some(7), "{err}");
    assert!(
        err.contains(&format!("the application/spdx+json document attached to {node1} differs from the rebuilt one")),
        "{err}"
    );
    assert!(err.contains(r#"versionInfo`: "3.9.9" in the image, "3.4.10" rebuilt"#), "{err}");

    // No provenance at all: nothing to verify against.
    let bare = fresh("bare");
    edit_index(&bare, |entries| entries.retain(|m| m["artifactType"].is_null()));
    let (code, err) = verify(&p, &format!("oci:{}:node-1", bare.display()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("carries no provenance"), "{err}");
}

#[test]
fn pushed_images_carry_their_referrers_and_verify_from_the_registry() {
    let p = TestProject::new();
    p.add_base();
    let registry = Registry::plain(&p.path("registry"));
    let repo = format!("{}/team/zk-kafka", registry.host());
    let pushed = json(&p.run(&["--json", "push", "--insecure", "--all", &repo]));
    for image in pushed["pushed"].as_array().unwrap() {
        assert_eq!(image["referrers"]["manifests"], 3, "{image}");
    }
    let node1 = pushed["pushed"][1]["digest"].as_str().unwrap().to_string();

    // docker-registry 2.8 has no referrers API: the fallback tag lists the three documents.
    require("skopeo");
    let fallback = format!("docker://{repo}:sha256-{}", node1.trim_start_matches("sha256:"));
    let raw = tool(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &fallback]));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut kinds: Vec<&str> =
        index["manifests"].as_array().unwrap().iter().map(|m| m["artifactType"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(kinds, [SPDX, CYCLONEDX, IN_TOTO]);

    // Pushing again adds nothing to it.
    assert_ok(&p.run(&["push", "--insecure", "--all", &repo]));
    let again = tool(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &fallback]));
    assert_eq!(again, raw);

    // `push --from` a layout sends the layout's referrers of the image too.
    assert_ok(&p.run(&["build"]));
    let other = format!("{}/team/from-layout:one", registry.host());
    let from =
        json(&p.run(&["--json", "push", "--insecure", "--from", "out/zk-kafka", "--from-tag", "node-1", &other]));
    assert_eq!(from["pushed"][0]["referrers"]["manifests"], 3, "{from}");
    let listed = tool(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(format!(
        "docker://{}/team/from-layout:sha256-{}",
        registry.host(),
        node1.trim_start_matches("sha256:")
    )));
    assert_eq!(listed, raw, "the same three referrers");

    // skopeo still copies the image itself, unchanged.
    let copy = p.path("copy");
    tool(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{repo}:node-1"))
            .arg(format!("oci:{}:node-1", copy.display())),
    );
    assert_eq!(tagged(&copy, "node-1"), node1);

    // Read back from the registry, by another store: the SBOM, and a rebuild that matches.
    let reader = p.path("reader-store");
    assert_ok(&p.cmd().env("IMGBUILD_STORE", &reader).args(["store", "add"]).arg(&p.base_layout).output().unwrap());
    let remote = format!("docker://{repo}:node-1");
    let sbom = p
        .cmd()
        .env("IMGBUILD_STORE", &reader)
        .args(["sbom", "--insecure", "--format", "cyclonedx", &remote])
        .output()
        .unwrap();
    let sbom: serde_json::Value = serde_json::from_slice(&stdout(&sbom).into_bytes()).unwrap();
    assert_eq!(sbom["metadata"]["component"]["hashes"][0]["content"], node1.trim_start_matches("sha256:"));
    // Printing an SBOM downloads the documents, not the image's layers.
    let manifest = tool(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(&remote));
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let jdk_layer = manifest["layers"][1].digest_str();
    assert!(!blob(&reader, &jdk_layer).exists(), "sbom fetched {jdk_layer}");
    let out = p.cmd().env("IMGBUILD_STORE", &reader).args(["verify", "--insecure", &remote]).output().unwrap();
    assert!(stdout(&out).starts_with(&node1), "{}", stderr(&out));
    assert!(blob(&reader, &jdk_layer).exists(), "after verify the layer is there: the path checked above is right");
    let out = p.cmd().env("IMGBUILD_STORE", &reader).args(["--offline", "verify", &remote]).output().unwrap();
    assert_exit(&out, 2);
}

/// Adds top-level `lines` to a recipe of the project (after its `version`).
fn declare(p: &TestProject, recipe: &str, lines: &str) {
    let path = p.root.join("recipes").join(recipe);
    let text = std::fs::read_to_string(&path).unwrap();
    let (head, tail) = text.split_once('\n').unwrap();
    let (version, rest) = tail.split_once('\n').unwrap();
    assert!(version.starts_with("version"), "{text}");
    std::fs::write(&path, format!("{head}\n{version}\n{lines}\n{rest}")).unwrap();
}

/// An uncompressed layer of `(path, content)` files (an empty content and a `/`: a directory).
fn layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_ustar();
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, path, std::io::empty()).unwrap();
        } else {
            h.set_mode(0o644);
            h.set_size(content.len() as u64);
            tar.append_data(&mut h, path, content.as_bytes()).unwrap();
        }
    }
    tar.into_inner().unwrap()
}

fn stanza(name: &str, version: &str, status: &str) -> String {
    format!("Package: {name}\nStatus: {status}\nPriority: required\nArchitecture: amd64\nVersion: {version}\nDescription: {name}\n more text\n\n")
}

#[test]
fn a_debian_base_lists_its_installed_packages_read_through_whiteouts_and_cached() {
    let p = TestProject::new();
    let installed = "install ok installed";
    let first = [stanza("base-files", "12.4", installed), stanza("removed-pkg", "1.0", installed)].concat();
    let last = [
        stanza("base-files", "12.4+deb12u5", installed),
        stanza("libc6", "2.36-9+deb12u4", installed),
        stanza("zlib1g", "1:1.2.13.dfsg-1", installed),
        stanza("leftover", "3", "deinstall ok config-files"),
    ]
    .concat();
    let layers = [
        layer(&[
            ("etc/", ""),
            ("etc/os-release", "PRETTY_NAME=\"Debian 12\"\nID=debian\n"),
            ("var/lib/dpkg/", ""),
            ("var/lib/dpkg/status", &first),
        ]),
        layer(&[("var/lib/dpkg/.wh.status", "")]),
        layer(&[("var/lib/dpkg/status", &last), ("var/lib/dpkg/status-old", &first)]),
        layer(&[("var/lib/apt/", ""), ("var/lib/apt/.wh..wh..opq", "")]),
    ];
    let base = p.path("debian-layout");
    let digest = super::fixtures::layered_layout(&base, &layers);
    p.write_recipe(
        "debian-bookworm-slim.toml",
        &format!("name = \"debian-bookworm-slim\"\nversion = \"12\"\nkind = \"oci-image\"\nimage = \"docker.io/library/debian\"\n\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"{digest}\"\n"),
    );
    assert_ok(&p.run(&["store", "add", base.to_str().unwrap()]));
    // Licenses as recipes declare them: an SPDX expression, and free text.
    declare(&p, "zookeeper.toml", "license = \"Apache-2.0\"\nhomepage = \"https://zookeeper.apache.org/\"");
    declare(&p, "kafka.toml", "license = \"Apache 2, see the LICENSE file\"");
    assert_ok(&p.run(&["build", "--platform", "linux/amd64"]));

    let spdx: serde_json::Value = serde_json::from_str(&stdout(&p.run(&["sbom", "oci:out/zk-kafka:node-0"]))).unwrap();
    let debs: Vec<&str> = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["externalRefs"][0]["referenceLocator"].as_str().filter(|u| u.starts_with("pkg:deb/")))
        .collect();
    assert_eq!(
        debs,
        [
            "pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=amd64",
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64",
            "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64",
        ]
    );
    let package = |name: &str| spdx["packages"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone();
    assert_eq!(package("zookeeper")["licenseDeclared"], "Apache-2.0");
    assert_eq!(package("zookeeper")["homepage"], "https://zookeeper.apache.org/");
    assert_eq!(package("kafka")["licenseDeclared"], "LicenseRef-kafka");
    assert_eq!(spdx["hasExtractedLicensingInfos"][0]["extractedText"], "Apache 2, see the LICENSE file");
    let base_purl = format!("pkg:oci/debian@{}?repository_url=docker.io/library/debian", digest.replace(':', "%3A"));
    assert!(spdx.to_string().contains(&base_purl), "{spdx}");
    let spdx_file = p.path("debian.spdx.json");
    std::fs::write(&spdx_file, spdx.to_string()).unwrap();
    tool(Command::new(tool_path("pyspdxtools")).arg("-i").arg(&spdx_file));
    validate_cyclonedx(&p, &stdout(&p.run(&["sbom", "--format", "cyclonedx", "oci:out/zk-kafka:node-0"])));

    // The base's packages are kept in the store by its digest: a rebuild reads no layer again.
    let cache = p.store.join("supply").join(format!("dpkg-v2-{}.json", digest.trim_start_matches("sha256:")));
    let mut cached = read_json(&cache);
    cached["debs"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "name": "from-the-cache", "version": "1", "arch": "all" }));
    std::fs::write(&cache, cached.to_string()).unwrap();
    assert_ok(&p.run(&["build", "--platform", "linux/amd64", "--out", "out/second"]));
    let again = stdout(&p.run(&["sbom", "oci:out/second:node-0"]));
    assert!(again.contains("pkg:deb/debian/from-the-cache@1?arch=all"), "{again}");
}

#[test]
fn a_multi_platform_archive_verifies_offline_from_a_mirror_and_nothing_else() {
    let p = TestProject::new();
    p.add_base();
    assert_ok(&p.run(&["build", "--platform", "linux/amd64,linux/arm64", "--format", "oci-archive"]));
    let archive = "oci-archive:out/zk-kafka.tar:cluster";

    // One SBOM per platform manifest, the provenance on the index.
    let arm = stdout(&p.run(&["sbom", "--platform", "linux/arm64", archive]));
    assert!(arm.contains("OpenJDK8U-jdk_aarch64_linux_hotspot_8u392b08.tar.gz"), "{arm}");
    let out = p.run(&["sbom", archive]);
    if std::env::consts::ARCH == "x86_64" {
        assert!(stdout(&out).contains("OpenJDK8U-jdk_x64_linux_hotspot_8u392b08.tar.gz"));
    }
    let out = p.run(&["sbom", "--platform", "linux/s390x", archive]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("has no linux/s390x manifest (it has: linux/amd64, linux/arm64)"),
        "{}",
        stderr(&out)
    );

    // A machine with an empty store, offline: the inputs are named, with where to get them.
    let empty = p.path("empty-store");
    let offline = |mirror: Option<&Path>| {
        let mut cmd = p.cmd();
        cmd.env("IMGBUILD_STORE", &empty).current_dir(p.tmp.path());
        if let Some(m) = mirror {
            cmd.arg("--mirror").arg(m);
        }
        cmd.args(["--offline", "verify"])
            .arg(format!("oci-archive:{}:cluster", p.root.join("out/zk-kafka.tar").display()));
        cmd.output().unwrap()
    };
    let out = offline(None);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("zookeeper-3.4.10.tar.gz"), "{}", stderr(&out));

    // With the upstream files in a mirror directory (and the base as its oci layout), it passes.
    let mirror = p.path("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    for (name, data) in &p.inputs {
        std::fs::write(mirror.join(name), data).unwrap();
    }
    copy_dir(&p.base_layout, &mirror.join("debian-bookworm-slim.tar"));
    let out = offline(Some(&mirror));
    assert_ok(&out);
    assert!(stderr(&out).contains("(tag cluster, linux/amd64, linux/arm64)"), "{}", stderr(&out));
}

#[test]
fn verify_never_takes_the_stores_records_for_a_layer() {
    let p = TestProject::new();
    p.add_base();
    let honest = json(&p.run(&["--json", "build", "--out", "out/honest"]));
    let layers = honest["cluster"]["platforms"][0]["layers"].as_array().unwrap().clone();
    let digest_of = |recipe: &str| {
        let by = format!("imgbuild recipe {recipe} ");
        layers.iter().find(|l| l["created_by"].as_str().unwrap().starts_with(&by)).unwrap()["digest"].clone()
    };
    // Someone with write access to the store makes ZooKeeper's record name Kafka's layer:
    // a record and a blob that are each consistent, so nothing in the store gives it away.
    let records: Vec<(PathBuf, serde_json::Value)> = std::fs::read_dir(p.store.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|path| (path.clone(), read_json(&path)))
        .collect();
    let record_of = |digest: &serde_json::Value| records.iter().find(|(_, r)| &r["digest"] == digest).unwrap();
    let (zookeeper, kafka) = (record_of(&digest_of("zookeeper")), record_of(&digest_of("kafka")));
    std::fs::copy(&kafka.0, &zookeeper.0).unwrap();
    let lied = json(&p.run(&["--json", "build", "--out", "out/lied"]));
    assert_eq!(lied["layers_built"], 0, "the build trusted its store: {lied}");
    assert_ne!(lied["cluster"]["digest"], honest["cluster"]["digest"]);

    // verify rebuilds every recipe layer from its pinned source: the lie is named...
    let (code, err) = verify(&p, "oci:out/lied:node-1");
    assert_eq!(code, Some(7), "{err}");
    assert!(err.contains("(imgbuild recipe zookeeper 3.4.10"), "{err}");
    // ...and the honest image verifies, and the rebuild wrote the true record back.
    let (code, err) = verify(&p, "oci:out/honest:node-1");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(read_json(&zookeeper.0), zookeeper.1);
}

/// A project whose image is built, and a copy of its layout at `name` to tamper with.
fn built_and_copied(name: &str) -> (TestProject, PathBuf) {
    let p = TestProject::new();
    p.add_base();
    assert_ok(&p.run(&["build"]));
    let copy = p.path(name);
    copy_dir(&p.root.join("out/zk-kafka"), &copy);
    (p, copy)
}

/// Issue 25: `verify`'s explanation inflated a 40 GiB file from a 41 MB layer. Reading the
/// image's layer to say which file differs stops at the unpack limit, which it names.
#[test]
fn verify_explains_a_difference_within_the_unpack_limit() {
    let (p, bomb) = built_and_copied("bomb");
    let statement = statement_of(&bomb, &tagged(&bomb, "node-1"));
    // 64 MiB of zeros, a small gzip; the limit is set below it (and above every source).
    let tampered = change_file(&bomb, "node-1", "usr/local/zookeeper/bin/zkServer.sh", &vec![0u8; 64 << 20]);
    attach_statement(&bomb, &tampered, statement, None);
    let image = format!("oci:{}:node-1", bomb.display());
    let out = p.cmd().env("IMGBUILD_MAX_UNPACKED", "20000000").args(["verify", &image]).output().unwrap();
    assert_exit(&out, 7);
    let err = stderr(&out);
    assert!(err.contains("layer 3 of 7 (imgbuild recipe zookeeper 3.4.10"), "{err}");
    assert!(err.contains("unpacks to more than 20000000 bytes") && err.contains("IMGBUILD_MAX_UNPACKED"), "{err}");
}

/// Issue 25: `verify` downloaded whatever URL a provenance document named, internal addresses
/// included. It asks only what this project's recipes and mirrors name; a URL only the
/// provenance names needs --provenance-urls, and on a non-public address --allow-host too.
#[test]
fn verify_fetches_only_what_the_project_names_unless_told_and_never_internal_addresses_unnamed() {
    let (p, layout) = built_and_copied("internal");
    // "Internal": another loopback server that the provenance alone names, for ZooKeeper.
    let internal = super::http::HttpServer::start();
    let zk = "zookeeper-3.4.10.tar.gz";
    internal.serve(&format!("dist/{zk}"), p.input(zk).to_vec(), super::http::Fault::None);
    let node1 = tagged(&layout, "node-1");
    let mut statement = statement_of(&layout, &node1);
    let deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"].as_array_mut().unwrap();
    let recipe = deps.iter_mut().find(|d| d["name"] == "recipes/zookeeper.toml").unwrap();
    let text = base64::engine::general_purpose::STANDARD.decode(recipe["content"].as_str().unwrap()).unwrap();
    let text = String::from_utf8(text).unwrap().replace(&p.server.url(""), &internal.url(""));
    assert!(text.contains(&internal.url(&format!("dist/{zk}"))), "{text}");
    recipe["content"] = base64::engine::general_purpose::STANDARD.encode(&text).into();
    recipe["digest"]["sha256"] = super::fixtures::sha256_hex(text.as_bytes()).into();
    attach_statement(&layout, &node1, statement, None);

    // From outside any project, with an empty store: nothing the provenance names is fetched.
    let elsewhere = p.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let store = p.path("verify-store");
    assert_ok(&p.cmd().env("IMGBUILD_STORE", &store).args(["store", "add"]).arg(&p.base_layout).output().unwrap());
    let image = format!("oci:{}:node-1", layout.display());
    let verify = |extra: &[&str]| {
        let mut cmd = p.cmd();
        cmd.current_dir(&elsewhere).env("IMGBUILD_STORE", &store).arg("verify").args(extra).arg(&image);
        cmd.output().unwrap()
    };
    let served = p.server.total_requests();
    let out = verify(&[]);
    assert_exit(&out, 3);
    let err = stderr(&out);
    let internal_url = internal.url(&format!("dist/{zk}"));
    assert!(err.contains(&format!("{internal_url}: not fetched: only the provenance names it")), "{err}");
    assert!(err.contains("--provenance-urls"), "{err}");
    assert_eq!(internal.total_requests(), 0);
    assert_eq!(p.server.total_requests(), served, "nor the project's server, which only the provenance names here");

    // --provenance-urls: public addresses only; loopback needs the user to name it.
    let out = verify(&["--provenance-urls"]);
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains("is at 127.0.0.1, not a public address (to fetch from it, pass --allow-host 127.0.0.1)"),
        "{err}"
    );
    assert_eq!(internal.total_requests(), 0);

    // Named on the command line, but redirecting to an internal address no one named: not followed.
    let metadata = super::http::HttpServer::start();
    metadata.serve("latest/meta-data", b"secret".to_vec(), super::http::Fault::None);
    let redirect = super::http::Fault::Redirect(metadata.url("latest/meta-data"));
    internal.serve(&format!("dist/{zk}"), Vec::new(), redirect);
    let allow = ["--provenance-urls", "--allow-host", &internal.addr.to_string()];
    let out = verify(&allow);
    assert_exit(&out, 3);
    let err = stderr(&out);
    let refused =
        format!("to {}: only the provenance names it, and 127.0.0.1 is at 127.0.0.1", metadata.url("latest/meta-data"));
    assert!(err.contains(&refused), "{err}");
    assert_eq!(metadata.total_requests(), 0);

    // Named on the command line: fetched from there (and only there).
    internal.serve(&format!("dist/{zk}"), p.input(zk).to_vec(), super::http::Fault::None);
    let out = verify(&allow);
    assert!(internal.total_requests() > 0, "{}", stderr(&out));
    assert!(!stderr(&out).contains(&internal_url), "{}", stderr(&out));
    assert_eq!(p.server.total_requests(), served);

    // A base image's repository is asked as a URL is: only where the project names it.
    let bare_store = p.path("bare-store");
    let out =
        p.cmd().current_dir(&elsewhere).env("IMGBUILD_STORE", &bare_store).arg("verify").arg(&image).output().unwrap();
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("docker://example.invalid/test/base: not fetched: only the provenance names it"), "{err}");

    // From the project, whose recipes name the original URLs: those are fetched without a flag.
    let out = p.cmd().env("IMGBUILD_STORE", &store).args(["verify", "oci:out/zk-kafka:node-1"]).output().unwrap();
    assert_ok(&out);
    assert!(p.server.total_requests() > served);
}

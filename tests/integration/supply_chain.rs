//! Issue #14: every image carries its SBOMs and provenance as OCI 1.1 referrers, the formats'
//! own validators accept them, and `imgbuild verify` rebuilds an image from its provenance:
//! it passes on what imgbuild built (from a layout, an archive, a registry) and names what
//! differs on what was changed.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::harness::*;

const SPDX: &str = "application/spdx+json";
const CYCLONEDX: &str = "application/vnd.cyclonedx+json";
const IN_TOTO: &str = "application/vnd.in-toto+json";

/// A tool of the venv `.ci/install` makes (or IMGBUILD_TEST_VENV): the formats' own validators.
fn venv_tool(name: &str) -> PathBuf {
    let venv =
        std::env::var_os("IMGBUILD_TEST_VENV").map_or_else(|| PathBuf::from("/opt/imgbuild-venv"), PathBuf::from);
    let bin = venv.join("bin").join(name);
    assert!(bin.exists(), "{} is missing: run .ci/install", bin.display());
    bin
}

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
    tool(Command::new(venv_tool("pyspdxtools")).arg("-i").arg(&spdx_file));
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
    if have_tool("skopeo") {
        let copy = p.path("copy");
        tool(
            Command::new("skopeo")
                .arg("copy")
                .arg(format!("oci:{}:node-1", layout.display()))
                .arg(format!("oci:{}:node-1", copy.display())),
        );
        assert_eq!(tagged(&copy, "node-1"), node1);
    }

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
    tool(Command::new(venv_tool("python")).arg("-c").arg(script).arg(&file));
}

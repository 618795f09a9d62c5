//! The pipeline end to end on the built-in cluster definition.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::harness::*;

/// Unpacks a tag of a layout with umoci and returns its rootfs.
pub(super) fn unpack(layout: &Path, tag: &str, bundle: &Path) -> std::path::PathBuf {
    let image = format!("{}:{tag}", layout.display());
    tool(Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(bundle));
    bundle.join("rootfs")
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> serde_json::Value {
    read_json(&layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:")))
}

/// The manifest a tag of a layout points at.
fn manifest_of(layout: &Path, tag: &str) -> serde_json::Value {
    let index = read_json(&layout.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {index}"));
    blob(layout, desc["digest"].as_str().unwrap())
}

#[test]
fn builds_every_node_sharing_all_but_a_tiny_identity_layer() {
    let p = TestProject::new();
    p.add_base();
    let out = p.run(&["--json", "build"]);
    let summary = json(&out);
    assert_eq!(summary["layers_built"], 3, "{summary}");
    let layout = p.root.join("out/zk-kafka");
    let nodes = summary["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);

    let manifests: Vec<_> = ["node-0", "node-1", "node-2"].iter().map(|t| manifest_of(&layout, t)).collect();
    let layers: Vec<Vec<serde_json::Value>> =
        manifests.iter().map(|m| m["layers"].as_array().unwrap().clone()).collect();
    // base + jdk + zookeeper + kafka + runtime + cluster + identity
    assert_eq!(layers[0].len(), 7);
    for other in &layers[1..] {
        assert_eq!(other[..6], layers[0][..6], "all nodes share every layer but the last");
        assert_ne!(other[6]["digest"], layers[0][6]["digest"], "identity layers differ");
    }
    for l in &layers {
        let size = l[6]["size"].as_u64().unwrap();
        assert!(size < 1024, "identity layer is tiny, got {size} bytes");
    }
    // The summary reports the same digests the layout holds.
    for (n, m) in nodes.iter().zip(&manifests) {
        let layer_digests: Vec<_> =
            n["platforms"][0]["layers"].as_array().unwrap().iter().map(|l| l["digest"].clone()).collect();
        let manifest_digests: Vec<_> = m["layers"].as_array().unwrap().iter().map(|l| l["digest"].clone()).collect();
        assert_eq!(layer_digests, manifest_digests);
    }

    // The config carries every input's hash, the node id and fixed times.
    let config = blob(&layout, manifests[1]["config"]["digest"].as_str().unwrap());
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.imgbuild.node.id"], "1");
    assert_eq!(
        labels["org.imgbuild.input.zookeeper"],
        format!("sha256:{}", super::fixtures::sha256_hex(p.input("zookeeper-3.4.10.tar.gz")))
    );
    assert_eq!(
        labels["org.imgbuild.input.kafka"],
        format!("sha512:{}", super::fixtures::sha512_hex(p.input("kafka_2.11-1.0.0.tgz")))
    );
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    let env: Vec<&str> = config["config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env.contains(&"JAVA_HOME=/opt/java/openjdk"), "{env:?}");
    assert!(env.contains(&"BASE=1"), "the base image's environment is kept: {env:?}");
    let path = env.iter().find(|e| e.starts_with("PATH=")).unwrap();
    assert!(
        path.starts_with("PATH=/opt/java/openjdk/bin:/usr/local/zookeeper/bin:/usr/local/kafka/bin:/usr/local/sbin"),
        "{path}"
    );
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/imgbuild-init");

    // Every entry of every layer imgbuild wrote: owner 0, no user names, the epoch as mtime,
    // only the normalized modes, and no PAX or long-name noise beyond what a path needs.
    for l in &layers[0][1..] {
        let path = layout.join("blobs/sha256").join(l["digest"].as_str().unwrap().trim_start_matches("sha256:"));
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()));
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let name = e.path().unwrap().display().to_string();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, 0), "{name}");
            assert!(
                h.username().unwrap().unwrap_or("").is_empty() && h.groupname().unwrap().unwrap_or("").is_empty(),
                "{name}"
            );
            assert!([0o755, 0o644, 0o777].contains(&h.mode().unwrap()), "{name}: mode {:o}", h.mode().unwrap());
        }
    }

    require_tool("skopeo");
    for tag in ["node-0", "node-1", "node-2"] {
        let info = tool(Command::new("skopeo").args(["inspect", &format!("oci:{}:{tag}", layout.display())]));
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["Layers"].as_array().unwrap().len(), 7);
        assert_eq!(info["Architecture"], "amd64");
    }
    // skopeo converts it, and the copy keeps the layer digests.
    let copy = p.path("copy");
    tool(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:node-1", layout.display()),
        &format!("oci:{}:copied", copy.display()),
    ]));
    assert_eq!(manifest_of(&copy, "copied")["layers"], manifests[1]["layers"]);

    require_tool("umoci");
    let rootfs = unpack(&layout, "node-1", &p.path("bundle"));
    let mode = |rel: &str| std::fs::symlink_metadata(rootfs.join(rel)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/imgbuild/node-id")).unwrap(), "1\n");
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap(), "ID=testbase\nARCH=amd64\n");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("opt/java/openjdk/bin/java")).unwrap(),
        "#!/bin/sh\necho java amd64"
    );
    assert_eq!(mode("opt/java/openjdk/bin/java"), 0o755, "executables are 0755");
    assert_eq!(mode("opt/java/openjdk/release"), 0o644);
    assert_eq!(mode("opt/java/openjdk/jre/lib/rt.jar"), 0o644, "group-writable input becomes 0644");
    assert_eq!(mode("usr/local/bin/imgbuild-init"), 0o755);
    assert_eq!(
        std::fs::read_link(rootfs.join("opt/java/openjdk/jre/lib/amd64/server/libjsig.so")).unwrap(),
        Path::new("../libjsig.so")
    );
    assert_eq!(
        std::fs::read(rootfs.join("opt/java/openjdk/jre/lib/rt-link.jar")).unwrap(),
        std::fs::read(rootfs.join("opt/java/openjdk/jre/lib/rt.jar")).unwrap()
    );
    assert!(!rootfs.join("opt/java/openjdk/src.zip").exists(), "excluded by the recipe");
    assert!(!rootfs.join("usr/local/zookeeper/docs").exists(), "excluded with everything below it");
    assert!(rootfs.join("usr/local/zookeeper/bin/zkServer.sh").is_file());
    assert!(rootfs.join("usr/local/kafka/libs/kafka_2.11-1.0.0.jar").is_file());
    assert!(!rootfs.join("usr/local/kafka/site-docs").exists());
    let templates = rootfs.join("etc/imgbuild/templates");
    assert!(templates.join("usr/local/zookeeper/conf/zoo.cfg").is_file());
    assert!(std::fs::read_to_string(rootfs.join("etc/imgbuild/cluster.env"))
        .unwrap()
        .contains("IMGBUILD_HOST_2='127.0.1.3'"));
}

#[test]
fn node_builds_one_image_and_a_second_build_does_no_layer_work() {
    let p = TestProject::new();
    p.add_base();
    let first = json(&p.run(&["--json", "node", "--id", "1"]));
    assert_eq!(first["layers_built"], 3);
    assert_eq!(first["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(first["nodes"][0]["tag"], "node-1");
    let layout = p.root.join("out/zk-kafka-node-1");
    let index = read_json(&layout.join("index.json"));
    let images = index["manifests"].as_array().unwrap().iter().filter(|m| m["artifactType"].is_null()).count();
    assert_eq!(images, 1, "one image (its SBOMs and provenance are listed untagged)");

    // Offline, with the server gone: everything comes from the store, nothing is rebuilt.
    let requests = p.server.total_requests();
    let second = json(&p.run(&["--json", "--offline", "node", "--id", "1"]));
    assert_eq!(second["layers_built"], 0);
    assert_eq!(second["nodes"][0]["digest"], first["nodes"][0]["digest"]);
    // Another node reuses the shared layers too.
    let other = json(&p.run(&["--json", "--offline", "node", "--id", "2"]));
    assert_eq!(other["layers_built"], 0);
    assert_ne!(other["nodes"][0]["digest"], first["nodes"][0]["digest"]);
    assert_eq!(p.server.total_requests(), requests, "no network use once inputs are stored");
}

/// The conditions a build runs under, which must not change its output.
struct Conditions<'a> {
    store: &'a Path,
    cwd: &'a Path,
    umask: &'a str,
    tz: &'a str,
    lang: &'a str,
    threads: &'a str,
}

/// Runs a build into `out` under the given conditions and returns the `--json` summary.
fn build_in(p: &TestProject, c: &Conditions<'_>, out: &Path) -> serde_json::Value {
    std::fs::create_dir_all(c.cwd).unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {}; exec \"$0\" \"$@\"", c.umask))
        .arg(BIN)
        .args(["--json", "--project", p.root.to_str().unwrap(), "build", "--format", "oci-archive"])
        .arg("--out")
        .arg(out)
        .current_dir(c.cwd)
        .env("IMGBUILD_STORE", c.store)
        .env("TZ", c.tz)
        .env("LANG", c.lang)
        .env("LC_ALL", c.lang)
        .env("IMGBUILD_THREADS", c.threads)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    json(&output)
}

#[test]
fn builds_are_byte_identical_across_stores_directories_umasks_time_zones_locales_and_threads() {
    let p = TestProject::new();
    let stores = [p.path("store-a"), p.path("elsewhere/store-b")];
    for store in &stores {
        let out = p
            .cmd()
            .env("IMGBUILD_STORE", store)
            .args(["store", "add", p.base_layout.to_str().unwrap()])
            .output()
            .unwrap();
        assert_ok(&out);
    }
    let (cwd_a, cwd_b, cwd_c) = (p.path("cwd-a"), p.path("cwd-b/deeper"), p.path("cwd-c"));
    let first = Conditions { store: &stores[0], cwd: &cwd_a, umask: "022", tz: "UTC", lang: "C", threads: "1" };
    let a = build_in(&p, &first, &p.path("a.tar"));
    let other = Conditions {
        store: &stores[1],
        cwd: &cwd_b,
        umask: "077",
        tz: "Asia/Shanghai",
        lang: "de_DE.UTF-8",
        threads: "8",
    };
    let b = build_in(&p, &other, &p.path("b.tar"));
    assert_eq!(a["nodes"], b["nodes"], "same digests for every node, config and layer");
    let (bytes_a, bytes_b) = (std::fs::read(p.path("a.tar")).unwrap(), std::fs::read(p.path("b.tar")).unwrap());
    assert!(bytes_a == bytes_b, "oci-archives differ");

    // A rebuild from a warm store is identical too.
    let warm = Conditions {
        store: &stores[0],
        cwd: &cwd_c,
        umask: "002",
        tz: "America/New_York",
        lang: "C.UTF-8",
        threads: "2",
    };
    let c = build_in(&p, &warm, &p.path("c.tar"));
    assert_eq!(c["nodes"], a["nodes"]);
    assert!(std::fs::read(p.path("c.tar")).unwrap() == bytes_a);

    require_tool("skopeo");
    let info =
        tool(Command::new("skopeo").args(["inspect", &format!("oci-archive:{}:node-2", p.path("a.tar").display())]));
    assert!(info.contains("\"Architecture\": \"amd64\""), "{info}");
}

#[test]
fn source_date_epoch_sets_every_timestamp() {
    let p = TestProject::new();
    p.add_base();
    let out = p.cmd().env("SOURCE_DATE_EPOCH", "1700000000").args(["--json", "node", "--id", "0"]).output().unwrap();
    let summary = json(&out);
    let layout = p.root.join("out/zk-kafka-node-0");
    let manifest = manifest_of(&layout, "node-0");
    let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(config["history"].as_array().unwrap().last().unwrap()["created"], "2023-11-14T22:13:20Z");
    // A different epoch is a different build.
    let zero = json(&p.run(&["--json", "node", "--id", "0"]));
    assert_ne!(zero["nodes"][0]["digest"], summary["nodes"][0]["digest"]);
    // The last second a config's `created` can hold builds; the next is a usage error.
    let last =
        p.cmd().env("SOURCE_DATE_EPOCH", "253402300799").args(["node", "--id", "0", "--out", "last"]).output().unwrap();
    assert_ok(&last);
    let config =
        blob(&p.root.join("last"), manifest_of(&p.root.join("last"), "node-0")["config"]["digest"].as_str().unwrap());
    assert_eq!(config["created"], "9999-12-31T23:59:59Z");
    let after = p
        .cmd()
        .env("SOURCE_DATE_EPOCH", "253402300800")
        .args(["node", "--id", "0", "--out", "after"])
        .output()
        .unwrap();
    assert_exit(&after, 2);
    assert!(stderr(&after).contains("after 9999-12-31T23:59:59Z"), "{}", stderr(&after));
}

#[test]
fn the_compression_level_changes_digests_but_never_the_content() {
    let p = TestProject::new();
    p.add_base();
    let fast = json(&p.run(&["--json", "node", "--id", "0", "--out", "fast"]));
    let small = json(&p.run(&["--json", "node", "--id", "0", "--level", "9", "--out", "small"]));
    let layers = |v: &serde_json::Value| v["nodes"][0]["platforms"][0]["layers"].as_array().unwrap().clone();
    let (fast, small) = (layers(&fast), layers(&small));
    // The recipe layers (after the base): other bytes, smaller, the very same tar inside.
    for i in 1..4 {
        assert_ne!(fast[i]["digest"], small[i]["digest"]);
        assert_eq!(fast[i]["diff_id"], small[i]["diff_id"]);
        assert!(small[i]["size"].as_u64() <= fast[i]["size"].as_u64());
    }
    assert_exit(&p.run(&["node", "--id", "0", "--level", "0"]), 2);
}

#[test]
fn multi_platform_build_writes_one_index_per_node() {
    let p = TestProject::new();
    p.add_base();
    let summary = json(&p.run(&["--json", "build", "--platform", "linux/amd64,linux/arm64"]));
    let layout = p.root.join("out/zk-kafka");
    for node in summary["nodes"].as_array().unwrap() {
        assert_eq!(node["media_type"], "application/vnd.oci.image.index.v1+json");
        let index = blob(&layout, node["digest"].as_str().unwrap());
        let platforms: Vec<_> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(platforms, ["amd64", "arm64"]);
        let amd = blob(&layout, index["manifests"][0]["digest"].as_str().unwrap());
        let arm = blob(&layout, index["manifests"][1]["digest"].as_str().unwrap());
        // Each platform has its own JDK and base layer; ZooKeeper and Kafka are the same files.
        assert_ne!(amd["layers"][1], arm["layers"][1]);
        assert_eq!(amd["layers"][2], arm["layers"][2]);
        assert_eq!(amd["layers"][3], arm["layers"][3]);
    }
    require_tool("skopeo");
    let raw = tool(Command::new("skopeo").args(["inspect", "--raw", &format!("oci:{}:node-1", layout.display())]));
    assert!(raw.contains("image.index"), "{raw}");
    let arm = tool(Command::new("skopeo").args([
        "--override-arch",
        "arm64",
        "inspect",
        &format!("oci:{}:node-1", layout.display()),
    ]));
    assert!(arm.contains("\"Architecture\": \"arm64\""), "{arm}");
    // Asking for one platform fetches and builds only that one.
    let q = TestProject::new();
    q.add_base();
    json(&q.run(&["--json", "node", "--id", "0", "--platform", "linux/arm64"]));
    assert!(q.server.requests("dist/OpenJDK8U-jdk_x64_linux_hotspot_8u392b08.tar.gz").is_empty());
    assert_eq!(q.server.requests("dist/OpenJDK8U-jdk_aarch64_linux_hotspot_8u392b08.tar.gz").len(), 1);
}

#[test]
fn docker_archive_is_readable_as_docker_archive() {
    let p = TestProject::new();
    p.add_base();
    let archive = p.path("node-1.docker.tar");
    json(&p.run(&["--json", "node", "--id", "1", "--format", "docker-archive", "--out", archive.to_str().unwrap()]));
    let mut tar = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let mut manifest = None;
    let mut names = Vec::new();
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        if name == "manifest.json" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            manifest = Some(s);
        }
        names.push(name);
    }
    let manifest: serde_json::Value = serde_json::from_str(&manifest.expect("manifest.json")).unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], "zk-kafka:node-1");
    assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), 7);
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        assert!(names.contains(&layer.as_str().unwrap().to_string()));
    }
    require_tool("skopeo");
    let info = tool(Command::new("skopeo").args(["inspect", &format!("docker-archive:{}", archive.display())]));
    assert!(info.contains("\"Architecture\": \"amd64\""), "{info}");
    // Converting it back yields the same layers, by diff_id.
    let out = p.path("from-docker");
    tool(Command::new("skopeo").args([
        "copy",
        &format!("docker-archive:{}", archive.display()),
        &format!("oci:{}:x", out.display()),
    ]));
    // Several platforms cannot go in one docker-archive.
    let bad = p.run(&["node", "--id", "1", "--format", "docker-archive", "--platform", "linux/amd64,linux/arm64"]);
    assert_exit(&bad, 2);
}

#[test]
fn store_add_imports_sources_and_an_oci_archive_base_made_by_skopeo() {
    let p = TestProject::new();
    // Files fetched by other means: put them on disk and add them; the build then needs no network.
    let downloads = p.path("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let mut paths = Vec::new();
    for (name, data) in &p.inputs {
        std::fs::write(downloads.join(name), data).unwrap();
        paths.push(downloads.join(name).display().to_string());
    }
    let mut args = vec!["--json", "store", "add"];
    args.extend(paths.iter().map(String::as_str));
    let added = json(&p.run(&args));
    let kafka = added["added"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["path"].as_str().unwrap().ends_with("kafka_2.11-1.0.0.tgz"))
        .unwrap();
    assert_eq!(kafka["recipes"][0], "kafka (any)");

    // The base image as skopeo writes an oci-archive of it.
    require_tool("skopeo");
    let base_source = p.path("base.oci.tar");
    tool(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:bookworm-amd64", p.base_layout.display()),
        &format!("oci-archive:{}", base_source.display()),
    ]));
    let base = json(&p.run(&["--json", "store", "add", base_source.to_str().unwrap()]));
    assert_eq!(base["added"][0]["recipes"][0], "debian-bookworm-slim (linux/amd64)", "{base}");

    let summary = json(&p.run(&["--json", "--offline", "node", "--id", "2"]));
    assert_eq!(summary["layers_built"], 3);
    assert_eq!(p.server.total_requests(), 0, "offline build used the network");
}

#[test]
fn mirror_directory_serves_inputs_offline() {
    let p = TestProject::new();
    p.add_base();
    let mirror = p.path("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    for (name, data) in &p.inputs {
        std::fs::write(mirror.join(name), data).unwrap();
    }
    let summary =
        json(&p.cmd().env("IMGBUILD_MIRROR", &mirror).args(["--json", "--offline", "build"]).output().unwrap());
    assert_eq!(summary["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(p.server.total_requests(), 0);
}

#[test]
fn prefetch_prints_the_hash_to_pin() {
    let p = TestProject::new();
    let url = p.server.url("dist/zookeeper-3.4.10.tar.gz");
    let out = p.run(&["prefetch", &url]);
    assert_ok(&out);
    let expected = super::fixtures::sha256_hex(p.input("zookeeper-3.4.10.tar.gz"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("sha256 = \"{expected}\""));
    let out = json(&p.run(&["--json", "prefetch", "--sha512", &p.server.url("dist/kafka_2.11-1.0.0.tgz")]));
    assert_eq!(out["hash"], format!("sha512:{}", super::fixtures::sha512_hex(p.input("kafka_2.11-1.0.0.tgz"))));
    assert!(out["sri"].as_str().unwrap().starts_with("sha512-"));
}

#[test]
fn store_verify_finds_a_flipped_byte() {
    let p = TestProject::new();
    p.add_base();
    json(&p.run(&["--json", "node", "--id", "0"]));
    assert_ok(&p.run(&["store", "verify"]));
    let blobs = tree(&p.store.join("blobs/sha256"));
    let victim = p.store.join("blobs/sha256").join(&blobs[blobs.len() / 2]);
    let mut data = std::fs::read(&victim).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x01;
    let mut perms = std::fs::metadata(&victim).unwrap().permissions();
    perms.set_mode(0o644);
    std::fs::set_permissions(&victim, perms).unwrap();
    std::fs::write(&victim, data).unwrap();
    let out = p.run(&["store", "verify"]);
    assert_exit(&out, 4);
    assert!(stderr(&out).contains(victim.file_name().unwrap().to_str().unwrap()), "{}", stderr(&out));
    assert_ok(&p.run(&["store", "verify", "--repair"]));
    assert!(!victim.exists());
}

/// Runs the image's own entrypoint against an unpacked rootfs, rendering only.
fn render_node(rootfs: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new("sh");
    cmd.arg(rootfs.join("usr/local/bin/imgbuild-init"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("IMGBUILD_ROOT", rootfs)
        .env("IMGBUILD_CONF_DIR", rootfs.join("etc/imgbuild"))
        .env("IMGBUILD_SEED_DIRS", rootfs.join("no-seed"))
        .env("HOSTNAME", "buildhost")
        .env("IMGBUILD_RENDER_ONLY", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn the_entrypoint_renders_each_nodes_identity_at_boot() {
    require_tool("umoci");
    let p = TestProject::new();
    p.add_base();
    json(&p.run(&["--json", "node", "--id", "1"]));
    let rootfs = unpack(&p.root.join("out/zk-kafka-node-1"), "node-1", &p.path("bundle"));
    let read = |rel: &str| std::fs::read_to_string(rootfs.join(rel)).unwrap();

    // The baked id.
    let out = render_node(&rootfs, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read("var/lib/zookeeper/myid"), "1\n");
    let zoo = read("usr/local/zookeeper/conf/zoo.cfg");
    assert!(
        zoo.contains("\nserver.0=127.0.1.1:2888:3888\nserver.1=0.0.0.0:2888:3888\nserver.2=127.0.1.3:2888:3888\n"),
        "{zoo}"
    );
    assert!(zoo.contains("dataDir=/var/lib/zookeeper\nclientPort=2181\nclientPortAddress=0.0.0.0\n"), "{zoo}");
    let props = read("usr/local/kafka/config/server.properties");
    assert!(props.contains("broker.id=1\n"), "{props}");
    assert!(props.contains("advertised.listeners=PLAINTEXT://127.0.1.2:9092\n"), "{props}");
    assert!(props.contains("zookeeper.connect=127.0.1.1:2181,127.0.1.2:2181,127.0.1.3:2181\n"), "{props}");

    // Nodes sharing one network namespace bind their own address, told once for all nodes.
    let out = render_node(&rootfs, &[("IMGBUILD_VAR_bind_address", "{{node_host}}")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let zoo = read("usr/local/zookeeper/conf/zoo.cfg");
    assert!(zoo.contains("\nserver.1=127.0.1.2:2888:3888\n") && zoo.contains("clientPortAddress=127.0.1.2\n"), "{zoo}");
    assert!(read("usr/local/kafka/config/server.properties").contains("listeners=PLAINTEXT://127.0.1.2:9092\n"));
    let out = render_node(&rootfs, &[("IMGBUILD_VAR_bind_address", "{{kafka_port}}")]);
    assert_eq!(out.status.code(), Some(64), "a var may not expand other vars");

    // A different node's data is never taken over: the same image told it is node 2 refuses.
    let out = render_node(&rootfs, &[("NODE_ID", "2")]);
    assert_eq!(out.status.code(), Some(65), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds '1' but this node would write '2'"));

    // With fresh data, the environment wins over the baked id, and peers can be overridden.
    std::fs::remove_file(rootfs.join("var/lib/zookeeper/myid")).unwrap();
    let out = render_node(&rootfs, &[("ZOO_MY_ID", "2"), ("PEERS", "0=zk-a,1=zk-b,2=zk-c")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read("var/lib/zookeeper/myid"), "2\n");
    assert!(
        read("usr/local/kafka/config/server.properties").contains("zookeeper.connect=zk-a:2181,zk-b:2181,zk-c:2181\n")
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("environment variable ZOO_MY_ID"));

    // Bad input at boot: tests/integration/entrypoint.rs, on hand-written cluster files.

    // The kernel command line, then a NoCloud seed, then the hostname ordinal, come before the baked id.
    let fresh = |rootfs: &Path| {
        let _ = std::fs::remove_file(rootfs.join("var/lib/zookeeper/myid"));
    };
    let seed = rootfs.join("run/imgbuild/cidata");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("meta-data"), "instance-id: zk-kafka-node-2\nimgbuild_node_id: 2\n").unwrap();
    std::fs::create_dir_all(rootfs.join("proc")).unwrap();
    std::fs::write(rootfs.join("proc/cmdline"), "console=ttyS0 imgbuild.node=0 quiet\n").unwrap();
    for (env, expect) in [
        (
            vec![("IMGBUILD_SEED_DIRS", seed.to_str().unwrap())],
            "node 0 of cluster zk-kafka (identity from kernel command line)",
        ),
        (vec![("IMGBUILD_SEED_DIRS", seed.to_str().unwrap()), ("HOSTNAME", "zk-1")], "node 0 of cluster"),
    ] {
        fresh(&rootfs);
        let out = render_node(&rootfs, &env);
        assert!(String::from_utf8_lossy(&out.stderr).contains(expect), "{}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::remove_file(rootfs.join("proc/cmdline")).unwrap();
    fresh(&rootfs);
    let out = render_node(&rootfs, &[("IMGBUILD_SEED_DIRS", seed.to_str().unwrap()), ("HOSTNAME", "zk-1")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("node 2 of cluster zk-kafka (identity from NoCloud seed"));
    fresh(&rootfs);
    let out = render_node(&rootfs, &[("HOSTNAME", "zk-0")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("node 0 of cluster zk-kafka (identity from hostname zk-0)"));
    assert_eq!(read("var/lib/zookeeper/myid"), "0\n");
    fresh(&rootfs);

    // An id outside the cluster is refused before anything is written.
    let out = render_node(&rootfs, &[("NODE_ID", "5")]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a node of cluster zk-kafka"));
}

#[test]
fn concurrent_builds_on_one_store_agree_and_leave_nothing_half_done() {
    let p = TestProject::new();
    p.add_base();
    let children: Vec<_> = (0..4)
        .map(|i| {
            let out = p.path(&format!("out-{i}"));
            p.cmd().args(["--json", "build", "--out"]).arg(out).stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let results: Vec<serde_json::Value> = children.into_iter().map(|c| json(&c.wait_with_output().unwrap())).collect();
    for r in &results[1..] {
        assert_eq!(r["nodes"], results[0]["nodes"]);
    }
    // Each input was downloaded once and each layer built once, whoever got there first.
    assert_eq!(p.server.requests("dist/zookeeper-3.4.10.tar.gz").len(), 1);
    let built: u64 = results.iter().map(|r| r["layers_built"].as_u64().unwrap()).sum();
    assert_eq!(built, 3, "layers were built more than once");
    let leftovers: Vec<_> = tree(&p.store.join("tmp")).into_iter().filter(|f| !f.starts_with("partial-")).collect();
    assert!(leftovers.is_empty(), "temporary files left in the store: {leftovers:?}");
    assert_ok(&p.run(&["store", "verify"]));
}

#[test]
fn build_also_writes_a_cluster_image_that_takes_its_whole_identity_at_boot() {
    let p = TestProject::new();
    p.add_base();
    let summary = json(&p.run(&["--json", "build"]));
    let layout = p.root.join("out/zk-kafka");
    let cluster = manifest_of(&layout, "cluster");
    assert_eq!(summary["cluster"]["tag"], "cluster");
    let node = manifest_of(&layout, "node-1");
    let (shared, own) = (cluster["layers"].as_array().unwrap(), node["layers"].as_array().unwrap());
    assert_eq!(shared[..], own[..own.len() - 1], "the cluster image is every node's shared layers");
    assert_eq!(summary["nodes"][1]["identity_layer"]["digest"], own[own.len() - 1]["digest"]);
    let config = blob(&layout, cluster["config"]["digest"].as_str().unwrap());
    let labels = &config["config"]["Labels"];
    assert!(labels.get("org.imgbuild.node.id").is_none(), "no node is baked in: {labels}");
    assert_eq!(labels["org.imgbuild.cluster"], "zk-kafka");
    // Without a baked id, the entrypoint needs one at boot, and takes any node's.
    let bundle = p.path("bundle-cluster");
    let rootfs = unpack(&layout, "cluster", &bundle);
    assert!(!rootfs.join("etc/imgbuild/node-id").exists());
    let none = render_node(&rootfs, &[]);
    assert_eq!(none.status.code(), Some(64), "{}", String::from_utf8_lossy(&none.stderr));
    let two = render_node(&rootfs, &[("NODE_ID", "2")]);
    assert!(two.status.success(), "{}", String::from_utf8_lossy(&two.stderr));
    assert_eq!(std::fs::read_to_string(rootfs.join("var/lib/zookeeper/myid")).unwrap().trim(), "2");
}

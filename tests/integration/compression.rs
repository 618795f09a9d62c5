//! zstd layers (`--compression zstd`): the same bytes for any thread count, cached apart from
//! gzip layers, smaller than gzip level 6, and read by what a user points at them: skopeo on
//! the layout, `imgbuild vm`, and Podman pulling from a real registry and running it.

use std::process::Command;

use super::fixtures::{self, Entry};
use super::harness::*;
use super::hostile_layers::{project_with_debian_root, recipe};
use super::registry_server::Registry;

const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A project whose image is a root filesystem made of this machine's Debian files (a shell
/// and coreutils, so that it runs) and one application layer.
fn project() -> TestProject {
    let (p, root) = project_with_debian_root();
    recipe(&p, "rootfs", "rootfs.tar.gz", fixtures::gzip(&fixtures::tar_of_root(&root, &[])), "");
    let app = vec![
        Entry::Dir("app-1.0/"),
        Entry::File("app-1.0/hello.txt".into(), b"hello from a zstd layer\n".to_vec(), 0o644),
        Entry::File("app-1.0/data.bin".into(), fixtures::noise(7, 3 << 20), 0o644),
    ];
    recipe(&p, "app", "app-1.0.tar.gz", fixtures::tar_gz(&app), "strip_components = 1\nprefix = \"/opt/app\"\n");
    std::fs::write(
        p.root.join("images/zapp.toml"),
        "name = \"zapp\"\nbase = \"rootfs\"\nlayers = [\"app\"]\n\n[config]\nentrypoint = [\"/bin/sh\", \"-c\"]\n\n[[cluster.node]]\nid = 0\nhost = \"127.0.1.1\"\n",
    )
    .unwrap();
    p
}

/// `node --id 0` into `out`, from a store of its own, with `threads` compression threads.
fn build(p: &TestProject, store: &str, threads: &str, args: &[&str], out: &str) -> serde_json::Value {
    let mut cmd = p.cmd();
    cmd.env("IMGBUILD_STORE", p.path(store)).env("IMGBUILD_THREADS", threads);
    json(&cmd.args(["--json", "node", "--id", "0", "--out", out]).args(args).output().unwrap())
}

fn layers(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["nodes"][0]["platforms"][0]["layers"].as_array().unwrap().clone()
}

#[test]
fn zstd_layers_are_the_same_for_any_thread_count_and_read_by_skopeo_and_vm() {
    ["skopeo", "umoci", "mke2fs", "debugfs", "qemu-img", "xorriso"].iter().for_each(|t| require_tool(t));
    let p = project();
    let zstd = ["--compression", "zstd"];
    let one = build(&p, "store-1", "1", &zstd, "zstd-1");
    for threads in ["2", "8"] {
        let again = build(&p, &format!("store-{threads}"), threads, &zstd, &format!("zstd-{threads}"));
        assert_eq!(again["nodes"][0]["digest"], one["nodes"][0]["digest"], "{threads} threads");
    }
    // The recipe layers are zstd (one frame after another), imgbuild's own small layers gzip.
    let zstd_layers = layers(&one);
    let recipe_layers = &zstd_layers[..2];
    for layer in recipe_layers {
        assert_eq!(layer["media_type"], ZSTD, "{layer}");
        let digest = layer["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let blob = std::fs::read(p.path("store-1/blobs/sha256").join(digest)).unwrap();
        assert_eq!(&blob[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    }
    assert!(zstd_layers[2..].iter().all(|l| l["media_type"] == GZIP));

    // Against gzip: the same tars inside, other blobs, each cached under its own derivation,
    // and smaller than gzip at level 6.
    let gzip6 = build(&p, "store-1", "2", &["--level", "6"], "gzip-6");
    assert_eq!(gzip6["layers_built"], 2, "zstd layers are not reused for gzip");
    for (z, g) in recipe_layers.iter().zip(&layers(&gzip6)) {
        assert_eq!(z["diff_id"], g["diff_id"]);
        assert_ne!(z["digest"], g["digest"]);
        assert!(z["size"].as_u64() <= g["size"].as_u64(), "zstd {z} vs gzip -6 {g}");
    }
    assert_eq!(build(&p, "store-1", "2", &zstd, "zstd-1")["layers_built"], 0, "zstd layers are cached");

    // skopeo and umoci read the layout.
    let layout = p.root.join("zstd-1");
    let image = format!("{}:node-0", layout.display());
    let manifest = tool(Command::new("skopeo").args(["inspect", "--raw", &format!("oci:{image}")]));
    assert_eq!(manifest.matches(ZSTD).count(), 2, "{manifest}");
    // skopeo decompresses each layer: the tar inside is the one the config names.
    let copy = p.path("decompressed");
    tool(
        Command::new("skopeo")
            .args(["copy", "--dest-decompress", &format!("oci:{image}")])
            .arg(format!("dir:{}", copy.display())),
    );
    for layer in recipe_layers {
        let diff_id = layer["diff_id"].as_str().unwrap().trim_start_matches("sha256:");
        assert!(copy.join(diff_id).exists(), "skopeo's copy has no tar {diff_id}: {:?}", tree(&copy));
    }
    // Debian 12's umoci (0.4.7) predates zstd (umoci reads it from 0.5.0, opencontainers/umoci#562):
    // it refuses by media type, as docs/internals.md says. What it unpacks of the gzip build is the same tree.
    let refused = Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(p.path("b")).output();
    let refused = refused.unwrap();
    let says = stderr(&refused);
    assert!(
        !refused.status.success()
            && says.contains("blob is not correct mediatype: application/vnd.oci.image.layer.v1.tar+zstd"),
        "umoci read zstd: update docs/internals.md ({says})"
    );
    let gzip_image = format!("{}:node-0", p.root.join("gzip-6").display());
    tool(Command::new("umoci").args(["unpack", "--rootless", "--image", &gzip_image]).arg(p.path("bundle")));
    let read = |path: &str| std::fs::read(p.path("bundle/rootfs").join(path)).unwrap();
    assert_eq!(read("opt/app/hello.txt"), b"hello from a zstd layer\n");
    assert_eq!(read("opt/app/data.bin"), fixtures::noise(7, 3 << 20));
    assert!(p.path("bundle/rootfs/usr/bin/dash").exists());

    // `imgbuild vm` applies zstd layers to the disk.
    let mut vm = p.cmd();
    vm.env("IMGBUILD_STORE", p.path("store-1"));
    json(&vm.args(["--json", "vm", "--id", "0", "--raw", "--out", "vm"]).args(zstd).output().unwrap());
    let disk = p.root.join("vm/base.raw");
    let hello = tool(Command::new("debugfs").arg("-R").arg("cat /opt/app/hello.txt").arg(&disk));
    assert_eq!(hello, "hello from a zstd layer\n");
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager=cgroupfs"]);
    c
}

/// Removes an image Podman pulled or loaded, also when the test fails.
struct Pulled(String);

impl Drop for Pulled {
    fn drop(&mut self) {
        let _ = podman().args(["rmi", "--force", &self.0]).output();
    }
}

#[test]
fn podman_pulls_a_zstd_image_from_a_registry_runs_it_and_loads_it() {
    ["podman", "runc", "docker-registry"].iter().for_each(|t| require_tool(t));
    let p = project();
    let registry = Registry::plain(&p.path("registry"));
    let repo = format!("{}/test/zapp", registry.addr);
    let pushed = json(&p.run(&["--json", "push", "--insecure", "--compression", "zstd", "--id", "0", &repo]));
    let digest = pushed["pushed"][0]["digest"].as_str().unwrap().to_string();
    let reference = format!("{repo}@{digest}");
    let _pulled = Pulled(reference.clone());
    let pull = podman().args(["pull", "--tls-verify=false", &reference]).output().unwrap();
    assert!(pull.status.success(), "podman pull: {}", stderr(&pull));
    let inspect = tool(
        Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{reference}")),
    );
    assert_eq!(inspect.matches(ZSTD).count(), 2, "{inspect}");
    let run = podman()
        .args(["run", "--rm", "--network=none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
        .arg(&reference)
        .arg("cat /opt/app/hello.txt && wc -c < /opt/app/data.bin")
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "podman run: {}\n{seen}", stderr(&run));
    assert_eq!(seen, format!("hello from a zstd layer\n{}\n", 3 << 20));

    // `imgbuild load` streams the same zstd layers into `podman load` as a docker-archive.
    let loaded = json(&p.run(&["--json", "load", "--compression", "zstd", "--id", "0"]));
    let config = loaded["loaded"][0]["config_digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let _loaded = Pulled(config.clone());
    let ids = tool(podman().args(["images", "--no-trunc", "--format", "{{.ID}}"]));
    assert!(ids.lines().any(|id| id.trim_start_matches("sha256:") == config), "{config} not in {ids}");
}

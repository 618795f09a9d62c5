//! VM disks and templates: reproducible, read back by independent tools, and booted under qemu.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::debian;
use super::fixtures;
use super::harness::*;

fn vm_tools() -> bool {
    ["mke2fs", "debugfs", "e2fsck", "qemu-img", "xorriso"].iter().all(|t| have_tool(t))
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    serde_json::from_str(&tool(Command::new("qemu-img").args(["info", "--output=json"]).arg(path))).unwrap()
}

fn debugfs(image: &Path, request: &str) -> String {
    tool(Command::new("debugfs").arg("-R").arg(request).arg(image).stderr(Stdio::null()))
}

#[test]
fn vm_disks_are_reproducible_and_read_back_by_independent_tools() {
    if !vm_tools() {
        return;
    }
    let p = TestProject::new();
    p.add_base();
    let a = json(&p.run(&["--json", "vm", "--all", "--raw", "--out", "vm-a"]));
    // Again, from another store, into another directory: the same bytes, file by file.
    let store_b = p.path("store-b");
    assert_ok(&p.cmd().env("IMGBUILD_STORE", &store_b).args(["store", "add"]).arg(&p.base_layout).output().unwrap());
    json(
        &p.cmd()
            .env("IMGBUILD_STORE", &store_b)
            .args(["--json", "vm", "--all", "--raw", "--out", "vm-b"])
            .output()
            .unwrap(),
    );
    let (dir_a, dir_b) = (p.root.join("vm-a"), p.root.join("vm-b"));
    let mut files = tree(&dir_a);
    assert_eq!(files, tree(&dir_b));
    files.sort_by_key(|f| f != "base.raw"); // the file system first: a difference there explains the rest
    for f in &files {
        assert!(
            std::fs::read(dir_a.join(f)).unwrap() == std::fs::read(dir_b.join(f)).unwrap(),
            "{f} differs between two builds"
        );
    }
    for expected in [
        "base.qcow2",
        "base.raw",
        "network.xml",
        "node-0.qcow2",
        "node-1.sh",
        "node-2.xml",
        "seed-node-1.iso",
        "user-data-node-2",
    ] {
        assert!(files.contains(&expected.to_string()), "{expected} missing: {files:?}");
    }

    // qemu-img: the base and the overlays, their format, backing file and size.
    let base = qemu_img_info(&dir_a.join("base.qcow2"));
    assert_eq!(base["format"], "qcow2");
    assert_eq!(base["virtual-size"].as_u64().unwrap(), std::fs::metadata(dir_a.join("base.raw")).unwrap().len());
    for n in 0..3 {
        let overlay = dir_a.join(format!("node-{n}.qcow2"));
        let info = qemu_img_info(&overlay);
        assert_eq!(info["backing-filename"], "base.qcow2");
        assert_eq!(info["backing-filename-format"], "qcow2");
        assert_eq!(info["virtual-size"], base["virtual-size"]);
        assert!(std::fs::metadata(&overlay).unwrap().len() < 1 << 20, "the overlay stays small");
        tool(Command::new("qemu-img").arg("check").arg(&overlay));
    }
    assert_eq!(a["nodes"].as_array().unwrap().len(), 3);
    tool(Command::new("qemu-img").arg("check").arg(dir_a.join("base.qcow2")));

    // e2fsck and debugfs: a clean ext4 holding the layers, with their modes and owners.
    let raw = dir_a.join("base.raw");
    tool(Command::new("e2fsck").arg("-fn").arg(&raw));
    assert!(debugfs(&raw, "cat /etc/imgbuild/cluster.env").contains("IMGBUILD_HOST_2='127.0.1.3'"));
    assert_eq!(debugfs(&raw, "cat /etc/os-release"), "ID=testbase\nARCH=amd64\n");
    let java = debugfs(&raw, "stat /opt/java/openjdk/bin/java");
    assert!(java.contains("Mode:  0755") && java.contains("User:     0   Group:     0"), "{java}");
    assert!(java.contains("mtime: 0x00000000"), "{java}");
    assert!(debugfs(&raw, "stat /usr/local/sbin/imgbuild-vm-init").contains("Mode:  0755"));
    assert!(!debugfs(&raw, "ls /etc/imgbuild").contains("node-id"), "the identity is not in the shared disk");

    // The NoCloud seed: volume `cidata`, meta-data naming the node.
    let seed = dir_a.join("seed-node-1.iso");
    let pvd = tool(Command::new("xorriso").args(["-indev"]).arg(&seed).args(["-pvd_info"]).stderr(Stdio::null()));
    assert!(pvd.contains("Volume Id    : cidata"), "{pvd}");
    let extracted = p.path("seed-1");
    tool(
        Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(&seed)
            .args(["-extract", "/"])
            .arg(&extracted)
            .stderr(Stdio::null()),
    );
    assert!(std::fs::read_to_string(extracted.join("meta-data")).unwrap().contains("imgbuild_node_id: 1\n"));
    if have_tool("cloud-init") {
        for n in 0..3 {
            tool(
                Command::new("cloud-init")
                    .args(["schema", "--config-file"])
                    .arg(dir_a.join(format!("user-data-node-{n}"))),
            );
        }
    }
    if have_tool("virt-xml-validate") {
        for n in 0..3 {
            tool(Command::new("virt-xml-validate").arg(dir_a.join(format!("node-{n}.xml"))).arg("domain"));
        }
        tool(Command::new("virt-xml-validate").arg(dir_a.join("network.xml")).arg("network"));
    }
}

/// The newest kernel and initrd in /boot, as Debian's linux-image-amd64 installs them.
fn debian_kernel() -> Option<(PathBuf, PathBuf)> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .collect();
    kernels.sort();
    let kernel = kernels.pop()?;
    let version = kernel.file_name()?.to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    let initrd = PathBuf::from(format!("/boot/initrd.img-{version}"));
    initrd.exists().then_some((kernel, initrd))
}

/// Boots `script` with the given extra kernel arguments; returns the console, bounded in time.
fn boot(script: &Path, append: &str, from_seed: bool, log: &Path) -> String {
    let console = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(script);
    if from_seed {
        cmd.env("IMGBUILD_IDENTITY", "");
    }
    // Software emulation: this machine's /dev/kvm is nested and hangs a guest kernel.
    let mut child = cmd
        .env("IMGBUILD_APPEND", append)
        .env("IMGBUILD_ACCEL", "tcg")
        .stdin(Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the VM did not power off in time:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn nodes_boot_under_qemu_and_render_their_own_identity() {
    if !vm_tools() || !have_tool("qemu-system-x86_64") || !debian::available() {
        return;
    }
    let Some((kernel, initrd)) = debian_kernel() else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "no kernel in /boot: .ci/install must install linux-image-amd64"
        );
        eprintln!("skipping: no kernel in /boot");
        return;
    };
    let p = TestProject::new();
    // A base with a shell and the tools the entrypoint uses, from this machine's Debian packages,
    // plus mount and the ISO 9660 driver of the booted kernel, to read the NoCloud seed.
    let root = p.path("base-root");
    let mut packages = debian::BASE_PACKAGES.to_vec();
    packages.extend(["mount", "libmount1", "libblkid1", "kmod", "libzstd1", "liblzma5", "libssl3"]);
    debian::debian_root(&root, &packages);
    let version = kernel.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    let isofs = format!("lib/modules/{version}/kernel/fs/isofs");
    std::fs::create_dir_all(root.join("usr").join(&isofs)).unwrap();
    std::fs::copy(Path::new("/").join(&isofs).join("isofs.ko"), root.join("usr").join(&isofs).join("isofs.ko"))
        .unwrap();
    tool(Command::new("depmod").arg("-b").arg(&root).arg(&version));
    let digest = fixtures::layout_from_root(&p.path("debian-layout"), &root);
    p.write_recipe("debian-bookworm-slim.toml", &format!("name = \"debian-bookworm-slim\"\nversion = \"test\"\nkind = \"oci-image\"\n\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"{digest}\"\n"));
    assert_ok(&p.run(&["store", "add", p.path("debian-layout").to_str().unwrap()]));
    json(&p.run(&[
        "--json",
        "vm",
        "--all",
        "--out",
        "vm",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "512",
    ]));
    let dir = p.root.join("vm");
    // Nodes 1 and 2 told by the kernel command line, node 0 by nothing but its seed.
    for (n, from_seed) in [(1u32, false), (2, false), (0, true)] {
        let script = dir.join(format!("node-{n}.sh"));
        let console =
            boot(&script, "imgbuild.render_only=1 panic=-1 quiet", from_seed, &p.path(&format!("console-{n}.log")));
        let source = if from_seed { "NoCloud seed /run/imgbuild/cidata/meta-data" } else { "kernel command line" };
        assert!(console.contains(&format!("node {n} of cluster zk-kafka (identity from {source})")), "{console}");
        assert!(
            console.contains(&format!("rendered /var/lib/zookeeper/myid:\nimgbuild-vm:   {n}\n"))
                || console.contains(&format!("rendered /var/lib/zookeeper/myid:\r\nimgbuild-vm:   {n}\r\n")),
            "{console}"
        );
        assert!(console.contains(&format!("imgbuild-vm:   broker.id={n}")), "{console}");
        assert!(console.contains("entrypoint exited with status 0"), "{console}");
    }
}

//! VM disks and templates: reproducible, read back by independent tools, and booted under qemu.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::debian;
use super::fixtures;
use super::harness::*;

/// The tools every VM test needs (installed by .ci/install): a test without them fails.
fn require_vm_tools() {
    ["mke2fs", "debugfs", "e2fsck", "qemu-img", "xorriso"].iter().for_each(|t| require_tool(t))
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    serde_json::from_str(&tool(Command::new("qemu-img").args(["info", "--output=json"]).arg(path))).unwrap()
}

fn debugfs(image: &Path, request: &str) -> String {
    tool(Command::new("debugfs").arg("-R").arg(request).arg(image).stderr(Stdio::null()))
}

/// `imgbuild` as `p.cmd()` runs it, under `umask`.
fn with_umask(p: &TestProject, umask: &str) -> Command {
    let template = p.cmd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("umask {umask}; exec \"$0\" \"$@\"")).arg(BIN);
    for (key, value) in template.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.current_dir(template.get_current_dir().unwrap());
    cmd
}

#[test]
fn vm_disks_are_reproducible_and_read_back_by_independent_tools() {
    require_vm_tools();
    let p = TestProject::new();
    p.add_base();
    let a = json(&p.run(&["--json", "vm", "--all", "--raw", "--out", "vm-a"]));
    // Again, from another store and working directory, under another umask, time zone and
    // locale, into another directory: the same bytes, file by file.
    let store_b = p.path("elsewhere/store-b");
    assert_ok(&p.cmd().env("IMGBUILD_STORE", &store_b).args(["store", "add"]).arg(&p.base_layout).output().unwrap());
    let cwd_b = p.path("elsewhere/cwd");
    std::fs::create_dir_all(&cwd_b).unwrap();
    let dir_b = p.path("elsewhere/vm-b");
    json(
        &with_umask(&p, "077")
            .current_dir(&cwd_b)
            .env("IMGBUILD_STORE", &store_b)
            .env("TZ", "Asia/Shanghai")
            .env("LANG", "de_DE.UTF-8")
            .env("LC_ALL", "de_DE.UTF-8")
            .args(["--json", "--project", p.root.to_str().unwrap(), "vm", "--all", "--raw", "--out"])
            .arg(&dir_b)
            .output()
            .unwrap(),
    );
    let dir_a = p.root.join("vm-a");
    let mut files = tree(&dir_a);
    assert_eq!(files, tree(&dir_b));
    // The file system first (a difference there explains the rest), the record of them all last.
    files.sort_by_key(|f| (f != "base.raw", f == ".imgbuild-output.json"));
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
    require_tool("cloud-init");
    for n in 0..3 {
        tool(
            Command::new("cloud-init").args(["schema", "--config-file"]).arg(dir_a.join(format!("user-data-node-{n}"))),
        );
    }
    require_tool("virt-xml-validate");
    for n in 0..3 {
        tool(Command::new("virt-xml-validate").arg(dir_a.join(format!("node-{n}.xml"))).arg("domain"));
    }
    tool(Command::new("virt-xml-validate").arg(dir_a.join("network.xml")).arg("network"));
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

/// A VM the test started: stopped (by its process id) when the test ends, however it ends.
struct RunningVm(std::process::Child);

impl Drop for RunningVm {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Boots `script` with the given extra kernel arguments; returns the console, bounded in time.
fn boot(script: &Path, append: &str, from_seed: bool, log: &Path) -> String {
    let console = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(script);
    if from_seed {
        cmd.env("IMGBUILD_IDENTITY", "");
    }
    // Software emulation: this machine's /dev/kvm is nested and hangs a guest kernel.
    let mut vm = RunningVm(
        cmd.env("IMGBUILD_APPEND", append)
            .env("IMGBUILD_ACCEL", "tcg")
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    while vm.0.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            drop(vm);
            panic!("the VM did not power off in time:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn nodes_boot_under_qemu_and_render_their_own_identity() {
    require_feature("vm");
    require_vm_tools();
    require_tool("qemu-system-x86_64");
    debian::require();
    let (kernel, initrd) = debian_kernel().expect("no kernel in /boot: .ci/install installs linux-image-amd64");
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
    pin_base(&p, &p.path("debian-layout"), &digest);
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
    // Node 0 again, now unable to read its seed (the kernel may not load isofs): it says why,
    // and shows nothing of what its first boot rendered.
    let append = "imgbuild.render_only=1 panic=-1 quiet module_blacklist=isofs";
    let console = boot(&dir.join("node-0.sh"), append, true, &p.path("console-0-again.log"));
    assert!(console.contains("the kernel has no iso9660 driver"), "{console}");
    assert!(console.contains("not showing the configuration: the entrypoint failed"), "{console}");
    assert!(!console.contains("rendered /var/lib/zookeeper/myid"), "{console}");
    assert!(console.contains("node-0.sh: accelerator tcg (from IMGBUILD_ACCEL)"), "{console}");
}

/// Pins the project's base image to the layout at `dir` (image `digest`) and adds it to the store.
fn pin_base(p: &TestProject, dir: &Path, digest: &str) {
    p.write_recipe(
        "debian-bookworm-slim.toml",
        &format!("name = \"debian-bookworm-slim\"\nversion = \"test\"\nkind = \"oci-image\"\n\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"{digest}\"\n"),
    );
    assert_ok(&p.run(&["store", "add", dir.to_str().unwrap()]));
}

/// An uncompressed tar of (type, raw name, link target or content), written header by header
/// so that no library refuses the hostile names on the way.
fn raw_tar(entries: &[(tar::EntryType, &str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, name, extra) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        let data: &[u8] = if *kind == tar::EntryType::Regular { extra.as_bytes() } else { b"" };
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.as_old_mut().linkname[..extra.len()].copy_from_slice(extra.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(if *kind == tar::EntryType::Directory { 0o755 } else { 0o640 });
        h.set_uid(1000);
        h.set_gid(100);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// The tree under `dir` of an ext4 image, read back with debugfs: path → kind, mode, owner,
/// size or link target, and inode (to see hard links).
fn ext4_tree(image: &Path, dir: &str) -> std::collections::BTreeMap<String, (String, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_string()];
    while let Some(d) = stack.pop() {
        // `ls -p`: /inode/mode/uid/gid/name/size/
        for line in debugfs(image, &format!("ls -p \"{d}\"")).lines().filter(|l| l.starts_with('/')) {
            let f: Vec<&str> = line.split('/').collect();
            let (inode, mode, uid, gid, name, size) = (f[1], f[2], f[3], f[4], f[5], f[6]);
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{d}/{name}");
            let what = match &mode[..mode.len() - 4] {
                "04" => {
                    stack.push(path.clone());
                    format!("dir {} {uid}:{gid}", &mode[2..])
                }
                "12" => {
                    let stat = debugfs(image, &format!("stat \"{path}\""));
                    let target = stat.split("Fast link dest: \"").nth(1).and_then(|t| t.split('"').next()).unwrap();
                    format!("link -> {target} {uid}:{gid}")
                }
                _ => format!("file {} {uid}:{gid} {size} bytes", &mode[mode.len() - 4..]),
            };
            out.insert(path, (what, inode.parse().unwrap()));
        }
    }
    out
}

#[test]
fn hostile_base_layers_stay_inside_the_disk_and_the_disk_is_what_the_layers_say() {
    require_vm_tools();
    let p = TestProject::new();
    // A canary beside the output (and so beside its temporary directory and rootfs).
    let canary = p.root.join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("keep"), "canary").unwrap();
    let canary_abs = canary.display().to_string();
    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};
    let lower = raw_tar(&[
        (D, "h/", ""),
        (F, "h/keep/a", "kept"),
        (F, "h/gone/x", "lower"),
        (F, "h/opq/old", "lower"),
        (F, "h/opq/sub/deep", "lower"),
        (F, "h/file", "content"),
        (S, "h/to-host", &canary_abs),
        (S, "h/up", "../../../canary"),
    ]);
    let upper = raw_tar(&[
        (F, "h/.wh.gone", ""),
        (F, "h/opq/new", "upper"),
        (F, "h/opq/.wh..wh..opq", ""),
        (H, "h/hard", "h/file"),
        (S, "h/etc", "/etc"),
        (F, "h/.wh.missing", ""),
    ]);
    let layout = p.path("base-ok");
    pin_base(&p, &layout, &super::fixtures::layered_layout(&layout, &[lower.clone(), upper]));
    json(&p.run(&["--json", "vm", "--id", "0", "--raw", "--out", "vm"]));
    let raw = p.root.join("vm/base.raw");
    tool(Command::new("e2fsck").arg("-fn").arg(&raw));
    let tree = ext4_tree(&raw, "/h");
    let shown: Vec<(&str, &str)> = tree.iter().map(|(p, (w, _))| (p.as_str(), w.as_str())).collect();
    let to_host = format!("link -> {canary_abs} 1000:100");
    assert_eq!(
        shown,
        [
            ("/h/etc", "link -> /etc 1000:100"),
            ("/h/file", "file 0640 1000:100 7 bytes"),
            ("/h/hard", "file 0640 1000:100 7 bytes"),
            ("/h/keep", "dir 0755 0:0"),
            ("/h/keep/a", "file 0640 1000:100 4 bytes"),
            ("/h/opq", "dir 0755 0:0"),
            ("/h/opq/new", "file 0640 1000:100 5 bytes"),
            ("/h/to-host", to_host.as_str()),
            ("/h/up", "link -> ../../../canary 1000:100"),
        ]
    );
    assert_eq!(tree["/h/hard"].1, tree["/h/file"].1, "a hard link is the same inode");
    assert_eq!(debugfs(&raw, "cat /h/hard"), "content");

    // Each hostile upper layer is refused, naming the entry; nothing outside changes.
    for (entry, why) in [
        ((F, "h/to-host/evil", "x"), "through the symlink /h/to-host"),
        ((F, "h/up/.wh.keep", ""), "through the symlink /h/up"),
        ((F, "h/to-host/.wh..wh..opq", ""), "through the symlink /h/to-host"),
        ((F, "../canary/evil", "x"), "`..`"),
        ((F, "/tmp/evil", "x"), "absolute path"),
        ((F, "h/.wh..", ""), "no file name"),
        ((H, "h/steal", canary_abs.as_str()), "absolute path"),
        ((H, "h/steal", "h/to-host/keep"), "not in the archive"),
        ((H, "h/steal", "h/keep"), "a directory"),
    ] {
        let layout = p.path(&format!("base-{}", entry.1.replace('/', "_")));
        pin_base(&p, &layout, &super::fixtures::layered_layout(&layout, &[lower.clone(), raw_tar(&[entry])]));
        let out = p.run(&["vm", "--id", "0", "--out", "vm"]);
        assert_exit(&out, 1);
        assert!(stderr(&out).contains(why) && stderr(&out).contains(entry.1), "{entry:?}: {}", stderr(&out));
    }
    assert_eq!(std::fs::read_dir(&canary).unwrap().count(), 1, "nothing was added beside the canary");
    assert_eq!(std::fs::read_to_string(canary.join("keep")).unwrap(), "canary");
    let beside: Vec<String> =
        std::fs::read_dir(&p.root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(beside.iter().all(|n| !n.contains(".imgbuild-tmp-")), "a temporary directory was left: {beside:?}");
    assert_eq!(ext4_tree(&raw, "/h").len(), 9, "a refused build leaves the previous output as it was");
}

#[test]
fn vm_says_which_kernel_it_references_and_warns_about_what_is_missing() {
    require_vm_tools();
    let p = TestProject::new();
    p.add_base();
    // A platform without a VM machine is refused before any work, not given an x86 one.
    let out = p.run(&["vm", "--all", "--platform", "linux/arm/v7", "--out", "vm-arm"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("linux/arm/v7 has no VM template"), "{}", stderr(&out));
    assert!(!p.root.join("vm-arm").exists() && p.server.total_requests() == 0, "no work was done");

    let out = p.run(&["--json", "vm", "--id", "1", "--kernel", "/nonexistent/vmlinuz", "--out", "vm"]);
    let summary = json(&out);
    let warnings: Vec<&str> = summary["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(warnings.len(), 2, "the initrd is the host's own: {warnings:?}");
    assert!(warnings[0].contains("kernel /nonexistent/vmlinuz, which does not exist here"), "{warnings:?}");
    assert!(warnings[1].contains("loopback addresses"), "{warnings:?}");
    assert!(stderr(&out).contains("warning: network.xml hands out no addresses"), "{}", stderr(&out));
    assert_eq!(summary["boot"]["kernel"], "/nonexistent/vmlinuz");
    let script = std::fs::read_to_string(p.root.join("vm/node-1.sh")).unwrap();
    assert!(script.contains("default_kernel='/nonexistent/vmlinuz'\n"), "{script}");
    let network = std::fs::read_to_string(p.root.join("vm/network.xml")).unwrap();
    assert!(!network.contains("127.0.1"), "no loopback address is handed out: {network}");
    require_tool("virt-xml-validate");
    tool(Command::new("virt-xml-validate").arg(p.root.join("vm/network.xml")).arg("network"));
    // Without --kernel: /boot/vmlinuz if there is one, else the newest versioned kernel, said.
    let out = p.run(&["--json", "vm", "--id", "1", "--out", "vm"]);
    let summary = json(&out);
    let kernel = summary["boot"]["kernel"].as_str().unwrap();
    if !Path::new("/boot/vmlinuz").exists() {
        let newest = debian_kernel().map(|(k, _)| k.display().to_string());
        assert_eq!(Some(kernel.to_string()), newest);
    }
    assert!(summary["warnings"].as_array().unwrap().len() == 1, "only the network: {summary}");
}

/// Pieces of paths that shells, XML and YAML give a meaning: a generated path is a few of them.
const HOSTILE: [&str; 16] = [
    "$(touch PWN)",
    "`touch PWN`",
    "'",
    "\"",
    "&",
    "&amp;",
    "<x>",
    "]]>",
    "--",
    " ",
    ";touch PWN;",
    "${IFS}",
    "\\",
    "ü",
    "R&D'",
    "#",
];

/// A path component made of `count` hostile pieces, chosen by `seed`.
fn hostile_name(seed: usize, count: usize) -> String {
    (0..count).map(|i| HOSTILE[(seed * 7 + i * 5 + i * i) % HOSTILE.len()]).collect()
}

/// A stub `qemu-system-x86_64` on `dir`, writing each argument it gets to `$ARGS`, NUL-ended.
fn qemu_stub(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let stub = dir.join("qemu-system-x86_64");
    std::fs::write(&stub, "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > \"$ARGS\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn xpath(file: &Path, expression: &str) -> String {
    let out = tool(Command::new("xmllint").args(["--xpath", expression]).arg(file));
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

/// Issue #11: paths with shell, XML and YAML syntax in them are values, never code or markup.
#[test]
fn hostile_paths_are_quoted_in_the_script_and_escaped_in_the_xml() {
    require_vm_tools();
    ["xmllint", "cloud-init", "virt-xml-validate"].iter().for_each(|t| require_tool(t));
    let p = TestProject::new();
    p.add_base();
    let stubs = p.path("stubs");
    qemu_stub(&stubs);
    for round in 0..3 {
        let boot = p.path(&format!("boot-{round}")).join(hostile_name(round, 4));
        std::fs::create_dir_all(&boot).unwrap();
        let (kernel, initrd) =
            (boot.join(format!("vmlinuz{}", hostile_name(round + 3, 3))), boot.join(hostile_name(round + 5, 5)));
        std::fs::write(&kernel, "kernel").unwrap();
        std::fs::write(&initrd, "initrd").unwrap();
        let libvirt_dir = format!("/srv/R&D'/{}", hostile_name(round + 11, 6));
        let out = p.path(&format!("vm-{round}"));
        let result = p
            .cmd()
            .args(["--quiet", "vm", "--id", "0", "--kernel"])
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .args(["--libvirt-dir", &libvirt_dir, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert_ok(&result);
        let script = out.join("node-0.sh");
        tool(Command::new("sh").arg("-n").arg(&script));
        let (domain, network) = (out.join("node-0.xml"), out.join("network.xml"));
        tool(Command::new("xmllint").arg("--noout").arg(&domain).arg(&network));
        tool(Command::new("virt-xml-validate").arg(&domain).arg("domain"));
        tool(Command::new("virt-xml-validate").arg(&network).arg("network"));
        assert_eq!(xpath(&domain, "string(/domain/os/kernel)"), kernel.to_str().unwrap());
        assert_eq!(xpath(&domain, "string(/domain/os/initrd)"), initrd.to_str().unwrap());
        assert_eq!(
            xpath(&domain, "string(/domain/devices/disk[1]/source/@file)"),
            format!("{libvirt_dir}/node-0.qcow2")
        );
        tool(Command::new("cloud-init").args(["schema", "--config-file"]).arg(out.join("user-data-node-0")));
        // Run as a user would, with qemu replaced by the stub: it gets the paths as they are,
        // and nothing in them ran.
        let scratch = p.path(&format!("scratch-{round}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let args_file = scratch.join("args");
        let path = format!("{}:{}", stubs.display(), std::env::var("PATH").unwrap_or_default());
        let ran = Command::new(&script)
            .current_dir(&scratch)
            .env("PATH", path)
            .env("ARGS", &args_file)
            .env("IMGBUILD_ACCEL", "tcg")
            .env_remove("IMGBUILD_KERNEL")
            .env_remove("IMGBUILD_INITRD")
            .output()
            .unwrap();
        assert!(ran.status.success(), "node-0.sh: {}", String::from_utf8_lossy(&ran.stderr));
        let args = std::fs::read(&args_file).unwrap();
        let args: Vec<&[u8]> = args.split(|b| *b == 0).collect();
        let after = |flag: &str| args.iter().position(|a| *a == flag.as_bytes()).map(|i| args[i + 1]);
        assert_eq!(after("-kernel"), Some(kernel.as_os_str().as_encoded_bytes()));
        assert_eq!(after("-initrd"), Some(initrd.as_os_str().as_encoded_bytes()));
        for dir in [&scratch, &p.root, &out] {
            assert!(!dir.join("PWN").exists(), "code in a path ran (in {})", dir.display());
        }
    }
    // A control character cannot be carried by a line-based template: refused before any work.
    let out = p
        .cmd()
        .args(["vm", "--id", "0", "--kernel", "/boot/vm\nlinuz", "--out"])
        .arg(p.path("vm-nl"))
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("control character") && !p.path("vm-nl").exists(), "{}", stderr(&out));
}

/// Issue #11: a small base layer that unpacks past IMGBUILD_MAX_UNPACKED (a gzip of zeros) is
/// refused while it is unpacked, and nothing of it stays on disk.
#[test]
fn the_unpack_limit_bounds_the_vm_base_layers() {
    require_vm_tools();
    let p = TestProject::new();
    let layout = p.path("zeros-base");
    let mut zeros = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(64 << 20);
    h.set_mode(0o644);
    zeros.append_data(&mut h, "zeros", std::io::repeat(0).take(64 << 20)).unwrap();
    let base = fixtures::layered_layout(&layout, &[zeros.into_inner().unwrap()]);
    pin_base(&p, &layout, &base);
    let gzipped: u64 = tree(&layout.join("blobs/sha256"))
        .iter()
        .map(|b| layout.join("blobs/sha256").join(b).metadata().unwrap().len())
        .max()
        .unwrap();
    assert!(gzipped < 1 << 20, "the layer is small: {gzipped} bytes");
    let out =
        p.cmd().env("IMGBUILD_MAX_UNPACKED", "10000000").args(["vm", "--id", "0", "--out", "vm"]).output().unwrap();
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("more than 10000000 bytes (IMGBUILD_MAX_UNPACKED)") && err.contains("sha256:"), "{err}");
    let beside: Vec<String> =
        std::fs::read_dir(&p.root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(beside.iter().all(|n| !n.contains("imgbuild-tmp")) && !p.root.join("vm").exists(), "{beside:?}");
    // Within the limit, the same layer makes a disk.
    let out = p
        .cmd()
        .env("IMGBUILD_MAX_UNPACKED", "200000000")
        .args(["--json", "vm", "--id", "0", "--out", "vm"])
        .output()
        .unwrap();
    json(&out);
}

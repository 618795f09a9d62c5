//! VM outputs from the same layers as the OCI images:
//!
//! - `base.qcow2` (and `base.raw` on request): the shared layers applied in order (whiteouts
//!   honoured) as a reproducible ext4 file system, made by `mke2fs -d` with a UUID and hash seed
//!   derived from the layers, and every inode's times and owners then fixed with `debugfs`;
//! - per node: `node-N.qcow2`, an empty overlay on `base.qcow2` (relative backing path), and
//!   `seed-node-N.iso`, a NoCloud `cidata` seed whose `meta-data` names the node;
//! - templates: `node-N.xml` (libvirt), `node-N.sh` (plain qemu), `user-data-node-N`, and the
//!   cluster's `network.xml`.
//!
//! The node's identity layer is not in the base disk: a VM learns its id from the kernel
//! command line (`imgbuild.node=N`) or its seed, through the same entrypoint as a container.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use tar::EntryType;

use crate::digest::Sha256Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::ImageLayer;
use crate::image_def::{ImageDef, Node};
use crate::node::VM_INIT;
use crate::platform::Platform;
use crate::store::Store;

pub struct VmOptions {
    pub out: PathBuf,
    /// Keep `base.raw` beside `base.qcow2`.
    pub raw: bool,
    /// Kernel and initrd the templates boot (direct kernel boot: the disk has no boot loader).
    pub kernel: String,
    pub initrd: String,
    pub memory_mib: u32,
    /// Where the libvirt templates expect the disks (libvirt wants absolute paths).
    pub libvirt_dir: Option<String>,
    pub epoch: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct VmFile {
    pub path: PathBuf,
    pub size: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct VmNode {
    pub id: u32,
    pub host: String,
    pub mac: String,
    pub disk: VmFile,
    pub seed: VmFile,
    pub domain: PathBuf,
    pub script: PathBuf,
}

#[derive(Debug, serde::Serialize)]
pub struct VmSummary {
    pub output: PathBuf,
    pub base: VmFile,
    pub base_raw: Option<VmFile>,
    pub nodes: Vec<VmNode>,
    pub network: PathBuf,
}

/// Runs an external tool; a missing tool or a failure is a clear error naming it and its package.
fn run(cmd: &mut Command, tool: &str, package: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::tool(tool, package, "not installed (not found on PATH)"),
        _ => Error::tool(tool, package, format!("cannot run: {e}")),
    })?;
    if !out.status.success() {
        let status = out.status.code().map_or_else(|| "was killed".to_string(), |c| format!("exited with {c}"));
        return Err(Error::tool(tool, package, format!("{status}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// `a/./b` → `a/b`; refuses absolute paths and `..` (a base layer is untrusted input).
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Applies layers in order into `root`: whiteouts remove, later entries replace earlier ones.
/// Returns each path's owner from the layers (the file system gets them from `debugfs`).
struct Rootfs {
    root: PathBuf,
    owners: BTreeMap<PathBuf, (u64, u64)>,
    dir_modes: BTreeMap<PathBuf, u32>,
}

impl Rootfs {
    /// Refuses to write through a symlink: a layer must not reach outside the root.
    fn check_parents(&self, rel: &Path, layer: &str) -> Result<()> {
        let mut p = self.root.clone();
        for c in rel.parent().into_iter().flat_map(|p| p.components()) {
            p.push(c);
            if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(Error::UnsafeEntry {
                    archive: layer.to_string(),
                    entry: rel.display().to_string(),
                    reason: "written through a symlink".into(),
                });
            }
        }
        Ok(())
    }

    fn remove(&self, rel: &Path) -> io::Result<()> {
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(_) => Ok(()),
        }
    }

    fn apply(&mut self, store: &Store, layer: &ImageLayer) -> Result<()> {
        let name = layer.digest.to_string();
        let bad = |message: String| Error::BadArchive { archive: name.clone(), message };
        let file = store.open_blob(&layer.digest.0.to_hash())?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let gzipped = io::BufRead::fill_buf(&mut reader).at(&self.root)?.starts_with(&[0x1f, 0x8b]);
        let input: Box<dyn Read> =
            if gzipped { Box::new(flate2::bufread::MultiGzDecoder::new(reader)) } else { Box::new(reader) };
        let mut archive = tar::Archive::new(input);
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(format!("corrupt layer: {e}")))?;
            let raw = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
            let Some(rel) = clean(&raw) else {
                if raw.components().all(|c| matches!(c, Component::CurDir | Component::RootDir)) {
                    continue; // the layer's root directory itself
                }
                return Err(Error::UnsafeEntry {
                    archive: name.clone(),
                    entry: raw.display().to_string(),
                    reason: "absolute or `..` path".into(),
                });
            };
            self.check_parents(&rel, &name)?;
            let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            if file_name == ".wh..wh..opq" {
                let dir = self.root.join(&parent);
                if dir.is_dir() {
                    for child in fs::read_dir(&dir).at(&dir)? {
                        let child = child.at(&dir)?;
                        self.remove(&parent.join(child.file_name())).at(child.path())?;
                    }
                }
                continue;
            }
            if let Some(hidden) = file_name.strip_prefix(".wh.") {
                self.remove(&parent.join(hidden)).at(self.root.join(&rel))?;
                continue;
            }
            let path = self.root.join(&rel);
            fs::create_dir_all(self.root.join(&parent)).at(&path)?;
            let header = entry.header();
            let mode = header.mode().unwrap_or(0o644) & 0o7777;
            let owner = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
            let kind = header.entry_type();
            if kind != EntryType::Directory || !path.is_dir() {
                self.remove(&rel).at(&path)?;
            }
            match kind {
                EntryType::Directory => {
                    fs::create_dir_all(&path).at(&path)?;
                    self.dir_modes.insert(rel.clone(), mode);
                }
                EntryType::Regular | EntryType::Continuous => {
                    let mut out = fs::File::create(&path).at(&path)?;
                    io::copy(&mut entry, &mut out).map_err(|e| bad(format!("{}: {e}", rel.display())))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).at(&path)?;
                }
                EntryType::Symlink => {
                    let target = entry.link_name().map_err(|e| bad(e.to_string()))?.unwrap_or_default().into_owned();
                    std::os::unix::fs::symlink(&target, &path).at(&path)?;
                }
                EntryType::Link => {
                    let target = entry.link_name().map_err(|e| bad(e.to_string()))?.unwrap_or_default().into_owned();
                    let target = clean(&target).ok_or_else(|| Error::UnsafeEntry {
                        archive: name.clone(),
                        entry: rel.display().to_string(),
                        reason: "hard link outside the layer".into(),
                    })?;
                    self.check_parents(&target, &name)?;
                    fs::hard_link(self.root.join(&target), &path).at(&path)?;
                }
                // Device nodes and FIFOs: the VM's devtmpfs provides /dev.
                _ => continue,
            }
            self.owners.insert(rel, owner);
        }
        Ok(())
    }

    /// Directory modes last, so a read-only directory did not block writing into it.
    fn finish(&self) -> Result<()> {
        for (rel, mode) in &self.dir_modes {
            let path = self.root.join(rel);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).at(&path)?;
            }
        }
        Ok(())
    }
}

/// Every path under `root`, sorted, with the byte total of regular files.
fn walk(root: &Path) -> Result<(Vec<PathBuf>, u64)> {
    let mut paths = Vec::new();
    let mut bytes = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let child = rel.join(entry.file_name());
            let meta = entry.metadata().at(entry.path())?;
            if meta.is_dir() {
                stack.push(child.clone());
            } else if meta.is_file() {
                bytes += meta.len();
            }
            paths.push(child);
        }
    }
    paths.sort();
    Ok((paths, bytes))
}

/// A UUID (version 4 layout) derived from the layers, so the same layers give the same disk.
fn derived_uuid(layers: &[ImageLayer]) -> String {
    let ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
    let h = Sha256Digest::of(ids.join(",").as_bytes()).hex();
    let mut b = hex::decode(&h[..32]).expect("hex");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
}

/// A locally administered MAC, derived from the cluster and the node id.
fn mac(cluster: &str, id: u32) -> String {
    let h = Sha256Digest::of(format!("{cluster}/{id}").as_bytes()).hex();
    format!("52:54:00:{}:{}:{}", &h[0..2], &h[2..4], &h[4..6])
}

fn debugfs_quote(path: &Path) -> String {
    format!("\"/{}\"", path.display().to_string().replace('\\', "\\\\").replace('"', "\\\""))
}

/// The ext4 image of `root`, byte-identical for identical trees.
fn make_ext4(root: &Path, rootfs: &Rootfs, image: &Path, uuid: &str, epoch: u64) -> Result<()> {
    let (paths, bytes) = walk(root)?;
    let size_mib = (bytes + bytes / 4) / (1 << 20) + 64;
    let inodes = paths.len() as u64 * 3 / 2 + 1024;
    // e2fsprogs reads a fake time of 0 as "none" and would use the clock: the superblock's own
    // times are therefore 1970-01-01T00:00:01 when the epoch is 0 (inodes get the epoch itself).
    let epoch_s = epoch.max(1).to_string();
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .args(["-q", "-F", "-t", "ext4", "-L", "imgbuild-root", "-b", "4096", "-m", "0"])
        .args(["-U", uuid, "-E", &format!("hash_seed={uuid},root_owner=0:0"), "-N", &inodes.to_string(), "-d"])
        .arg(root)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .env("E2FSPROGS_FAKE_TIME", &epoch_s);
    run(&mut mke2fs, "mke2fs", "e2fsprogs")?;
    // mke2fs copies access and change times and owners from the tree it was given: set them.
    let mut cmds = String::new();
    for field in ["atime", "mtime", "ctime", "crtime"] {
        cmds.push_str(&format!("sif / {field} {epoch}\n"));
    }
    for rel in &paths {
        let (uid, gid) = rootfs.owners.get(rel).copied().unwrap_or((0, 0));
        let q = debugfs_quote(rel);
        for field in ["atime", "mtime", "ctime", "crtime"] {
            cmds.push_str(&format!("sif {q} {field} {epoch}\n"));
        }
        cmds.push_str(&format!("sif {q} uid {uid}\nsif {q} gid {gid}\n"));
    }
    let cmd_file = image.with_extension("debugfs");
    fs::write(&cmd_file, cmds).at(&cmd_file)?;
    let mut debugfs = Command::new("debugfs");
    debugfs.arg("-w").arg("-f").arg(&cmd_file).arg(image).env("E2FSPROGS_FAKE_TIME", &epoch_s);
    run(&mut debugfs, "debugfs", "e2fsprogs")?;
    fs::remove_file(&cmd_file).at(&cmd_file)?;
    // The superblock counts the kilobytes ever written; the tools' I/O is not part of the content.
    let mut reset = Command::new("debugfs");
    reset.args(["-w", "-R", "ssv kbytes_written 0"]).arg(image).env("E2FSPROGS_FAKE_TIME", &epoch_s);
    run(&mut reset, "debugfs", "e2fsprogs")
}

fn seed_files(def: &ImageDef, id: u32) -> (String, String) {
    let meta = format!(
        "instance-id: {name}-node-{id}\nlocal-hostname: {name}-{id}\nimgbuild_node_id: {id}\n",
        name = def.name
    );
    let user = format!(
        "#cloud-config\n# Node {id} of cluster {name}, written by imgbuild. imgbuild-init reads the id from\n# meta-data (imgbuild_node_id) or the kernel command line (imgbuild.node={id}).\nhostname: {name}-{id}\nwrite_files:\n  - path: /etc/imgbuild/node-id\n    content: \"{id}\\n\"\n    permissions: \"0644\"\n    owner: root:root\n",
        name = def.name
    );
    (meta, user)
}

fn make_seed(dir: &Path, iso: &Path, meta: &str, user: &str, epoch: u64) -> Result<()> {
    fs::create_dir_all(dir).at(dir)?;
    for (name, text) in [("meta-data", meta), ("user-data", user)] {
        let path = dir.join(name);
        fs::write(&path, text).at(&path)?;
        let f = fs::File::options().write(true).open(&path).at(&path)?;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
        f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t)).at(&path)?;
    }
    let mut xorriso = Command::new("xorriso");
    xorriso
        .args(["-as", "mkisofs", "-quiet", "-volid", "cidata", "-joliet", "-rock", "-o"])
        .arg(iso)
        .arg(dir.join("meta-data"))
        .arg(dir.join("user-data"))
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    run(&mut xorriso, "xorriso", "xorriso")?;
    fs::remove_dir_all(dir).at(dir)
}

fn arch(def_platform: &str) -> &'static str {
    if def_platform.contains("arm64") {
        "aarch64"
    } else {
        "x86_64"
    }
}

/// The kernel command line, without the node's identity (`imgbuild.node=N`).
fn cmdline() -> String {
    format!("root=/dev/vda rw console=ttyS0 init={VM_INIT}")
}

fn domain_xml(def: &ImageDef, id: u32, mac: &str, opts: &VmOptions, arch: &str) -> String {
    let dir = opts.libvirt_dir.clone().unwrap_or_else(|| format!("/var/lib/libvirt/images/{}", def.name));
    let machine = if arch == "x86_64" { "q35" } else { "virt" };
    format!(
        "<!-- Node {id} of cluster {name}, written by imgbuild: copy this directory's files to {dir},\n     then `virsh define node-{id}.xml`. -->\n<domain type='kvm'>\n  <name>{name}-node-{id}</name>\n  <memory unit='MiB'>{mem}</memory>\n  <vcpu>2</vcpu>\n  <os>\n    <type arch='{arch}' machine='{machine}'>hvm</type>\n    <kernel>{kernel}</kernel>\n    <initrd>{initrd}</initrd>\n    <cmdline>{cmdline} imgbuild.node={id}</cmdline>\n  </os>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{dir}/node-{id}.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='{dir}/seed-node-{id}.iso'/>\n      <target dev='sda' bus='sata'/>\n      <readonly/>\n    </disk>\n    <interface type='network'>\n      <mac address='{mac}'/>\n      <source network='imgbuild-{name}'/>\n      <model type='virtio'/>\n    </interface>\n    <serial type='pty'/>\n    <console type='pty'/>\n  </devices>\n</domain>\n",
        name = def.name,
        mem = opts.memory_mib,
        kernel = opts.kernel,
        initrd = opts.initrd,
        cmdline = cmdline(),
    )
}

fn qemu_script(def: &ImageDef, id: u32, mac: &str, opts: &VmOptions, arch: &str) -> String {
    format!(
        r#"#!/bin/sh
# Boots node {id} of cluster {name} with qemu, from this directory's disks (written by imgbuild).
# IMGBUILD_KERNEL and IMGBUILD_INITRD choose the kernel; IMGBUILD_APPEND adds kernel arguments
# (imgbuild.render_only=1 renders the configuration, shows it and powers off); IMGBUILD_ACCEL
# chooses kvm or tcg (default: kvm when /dev/kvm is usable); IMGBUILD_IDENTITY='' boots without
# imgbuild.node={id}, so the node finds its id in its NoCloud seed; extra arguments go to qemu.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
accel=${{IMGBUILD_ACCEL:-tcg}}
if [ -z "${{IMGBUILD_ACCEL:-}}" ] && [ -w /dev/kvm ]; then accel=kvm; fi
exec qemu-system-{arch} -machine accel="$accel" -m {mem} -smp 2 -nographic -no-reboot \
    -kernel "${{IMGBUILD_KERNEL:-{kernel}}}" -initrd "${{IMGBUILD_INITRD:-{initrd}}}" \
    -append "{cmdline} ${{IMGBUILD_IDENTITY-imgbuild.node={id}}} ${{IMGBUILD_APPEND:-}}" \
    -drive file="$dir/node-{id}.qcow2",if=virtio,format=qcow2 \
    -drive file="$dir/seed-node-{id}.iso",media=cdrom,format=raw,readonly=on \
    -nic user,model=virtio-net-pci,mac={mac} "$@"
"#,
        name = def.name,
        mem = opts.memory_mib,
        kernel = opts.kernel,
        initrd = opts.initrd,
        cmdline = cmdline(),
    )
}

/// libvirt's network for the cluster: each node's MAC gets the address the cluster names.
fn network_xml(def: &ImageDef) -> String {
    let first: Option<std::net::Ipv4Addr> = def.nodes.first().and_then(|n| n.host.parse().ok());
    let (gateway, note) = match first {
        Some(ip) if !ip.is_loopback() => {
            let o = ip.octets();
            (format!("{}.{}.{}.1", o[0], o[1], o[2]), String::new())
        }
        _ => (
            "192.168.150.1".to_string(),
            "\n     The cluster's hosts are not addresses a VM network can hand out (loopback or names):\n     set them in the image definition to addresses of this network.".to_string(),
        ),
    };
    let mut hosts = String::new();
    for n in &def.nodes {
        hosts.push_str(&format!(
            "      <host mac='{}' name='{}-{}' ip='{}'/>\n",
            mac(&def.name, n.id),
            def.name,
            n.id,
            n.host
        ));
    }
    format!(
        "<!-- The network of cluster {name}, written by imgbuild: `virsh net-define network.xml`.{note} -->\n<network>\n  <name>imgbuild-{name}</name>\n  <forward mode='nat'/>\n  <ip address='{gateway}' netmask='255.255.255.0'>\n    <dhcp>\n{hosts}    </dhcp>\n  </ip>\n</network>\n",
        name = def.name
    )
}

fn file_info(path: &Path) -> Result<VmFile> {
    Ok(VmFile { path: path.to_path_buf(), size: fs::metadata(path).at(path)?.len() })
}

/// Writes the VM outputs of `nodes` into `opts.out` (replacing it whole).
/// `shared` are the layers every node of the cluster shares (the node's identity comes from its
/// kernel command line or seed, not from a layer).
pub fn write(
    store: &Store,
    def: &ImageDef,
    platform: &Platform,
    shared: &[ImageLayer],
    nodes: &[Node],
    opts: &VmOptions,
) -> Result<VmSummary> {
    let arch = arch(&platform.to_string());
    let temp = super::temp_sibling(&opts.out);
    if temp.exists() {
        fs::remove_dir_all(&temp).at(&temp)?;
    }
    let work = temp.join(".rootfs");
    fs::create_dir_all(&work).at(&work)?;
    let mut rootfs = Rootfs { root: work.clone(), owners: BTreeMap::new(), dir_modes: BTreeMap::new() };
    for layer in shared {
        rootfs.apply(store, layer)?;
    }
    rootfs.finish()?;
    let raw = temp.join("base.raw");
    make_ext4(&work, &rootfs, &raw, &derived_uuid(shared), opts.epoch)?;
    // The tree may hold read-only directories: make them writable to remove it.
    for rel in rootfs.dir_modes.keys() {
        let _ = fs::set_permissions(work.join(rel), fs::Permissions::from_mode(0o755));
    }
    fs::remove_dir_all(&work).at(&work)?;
    let qcow = temp.join("base.qcow2");
    run(
        Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow),
        "qemu-img",
        "qemu-utils",
    )?;
    if !opts.raw {
        fs::remove_file(&raw).at(&raw)?;
    }
    let mut written = Vec::new();
    for n in nodes {
        let id = n.id;
        let node_mac = mac(&def.name, id);
        let disk = format!("node-{id}.qcow2");
        // Run in the output directory so the backing file is recorded relative: `base.qcow2`.
        run(
            Command::new("qemu-img").current_dir(&temp).args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                &disk,
            ]),
            "qemu-img",
            "qemu-utils",
        )?;
        let (meta, user) = seed_files(def, id);
        let seed = temp.join(format!("seed-node-{id}.iso"));
        make_seed(&temp.join(format!(".seed-{id}")), &seed, &meta, &user, opts.epoch)?;
        let user_data = temp.join(format!("user-data-node-{id}"));
        fs::write(&user_data, &user).at(&user_data)?;
        let domain = temp.join(format!("node-{id}.xml"));
        fs::write(&domain, domain_xml(def, id, &node_mac, opts, arch)).at(&domain)?;
        let script = temp.join(format!("node-{id}.sh"));
        fs::write(&script, qemu_script(def, id, &node_mac, opts, arch)).at(&script)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).at(&script)?;
        written.push((n.clone(), node_mac, disk));
    }
    let network = temp.join("network.xml");
    fs::write(&network, network_xml(def)).at(&network)?;
    super::replace(&temp, &opts.out)?;

    let out = &opts.out;
    let mut summary_nodes = Vec::new();
    for (node, node_mac, disk) in written {
        summary_nodes.push(VmNode {
            id: node.id,
            host: node.host,
            mac: node_mac,
            disk: file_info(&out.join(disk))?,
            seed: file_info(&out.join(format!("seed-node-{}.iso", node.id)))?,
            domain: out.join(format!("node-{}.xml", node.id)),
            script: out.join(format!("node-{}.sh", node.id)),
        });
    }
    Ok(VmSummary {
        output: out.clone(),
        base: file_info(&out.join("base.qcow2"))?,
        base_raw: if opts.raw { Some(file_info(&out.join("base.raw"))?) } else { None },
        nodes: summary_nodes,
        network: out.join("network.xml"),
    })
}

//! VM outputs from the same layers as the OCI images:
//!
//! - `base.qcow2` (and `base.raw` on request): the shared layers applied in order through the
//!   tree model ([`rootfs`]: whiteouts honoured inside the image tree, nothing written through a
//!   link) as a reproducible ext4 file system ([`ext4`]);
//!   The disk also holds the node's process from the image config ([`guest::process_file`]),
//!   which the VM init runs as a container engine would;
//! - per node: `node-N.qcow2`, an empty overlay on `base.qcow2` (relative backing path), and
//!   `seed-node-N.iso`, a NoCloud `cidata` seed whose `meta-data` names the node and whose
//!   `network-config` gives it its address from the cluster definition ([`seed`]);
//! - templates ([`templates`]): `node-N.xml` (libvirt), `node-N.sh` (plain qemu),
//!   `user-data-node-N`, and the cluster's `network.xml`. All nodes share one private network
//!   (a multicast group on the host's loopback, or libvirt's network), and each node's client
//!   ports are forwarded from the host's loopback only.
//!
//! The node's identity layer is not in the base disk: a VM learns its id from the kernel
//! command line (`imgbuild.node=N`) or its seed, through the same entrypoint as a container.
//! The output directory is replaced whole, and only when imgbuild wrote it and it has not
//! changed since: a booted node's overlay holds its state ([`super::destination`]).

mod ext4;
mod guest;
mod host_dir;
mod network;
mod rootfs;
mod seed;
mod templates;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Destination, TempPath};
use crate::atomic_file::{self, Options};
use crate::error::{Error, IoContext, Result};
use crate::image::ImageLayer;
use crate::image_def::{ImageDef, Node};
use crate::store::Store;
pub(crate) use templates::Boot;
pub(crate) use templates::{check_values, Machine};

pub(crate) struct VmOptions {
    pub(crate) out: Destination,
    /// The machine of the image's platform ([`Machine::for_platform`]).
    pub(crate) machine: Machine,
    /// Keep `base.raw` beside `base.qcow2`.
    pub(crate) raw: bool,
    pub(crate) boot: Boot,
    pub(crate) memory_mib: u32,
    /// Where the libvirt templates expect the disks (libvirt wants absolute paths).
    pub(crate) libvirt_dir: Option<String>,
    pub(crate) epoch: u64,
    /// What the base layers may unpack, all together (`IMGBUILD_MAX_UNPACKED`).
    pub(crate) max_unpacked: u64,
}

/// The image config blob the VM runs its node from, as the store holds it.
pub(crate) struct ImageConfigBlob<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) digest: String,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct VmFile {
    pub path: PathBuf,
    pub size: u64,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct VmNode {
    pub id: u32,
    pub host: String,
    pub mac: String,
    pub disk: VmFile,
    pub seed: VmFile,
    pub domain: PathBuf,
    pub script: PathBuf,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct VmSummary {
    pub output: PathBuf,
    pub base: VmFile,
    pub base_raw: Option<VmFile>,
    pub nodes: Vec<VmNode>,
    pub network: PathBuf,
    pub boot: Boot,
    /// What the templates will need that is not there (a kernel, network addresses).
    pub warnings: Vec<String>,
}

/// The programs `imgbuild vm` runs (rows of [`crate::host::NEEDS`], which knows their packages):
/// the command checks for them before it builds.
pub(crate) const TOOLS: [&str; 4] = ["mke2fs", "debugfs", "qemu-img", "xorriso"];

/// Runs an external tool (one of [`TOOLS`]); a missing tool or a failure is a clear error naming
/// it and its package. Returns what it printed on stderr.
fn run(cmd: &mut Command, tool: &str) -> Result<String> {
    let package = crate::host::package_of(tool);
    let out = cmd.output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::tool(tool, package, "not installed (not found on PATH)"),
        _ => Error::tool(tool, package, format!("cannot run: {e}")),
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let status = out.status.code().map_or_else(|| "was killed".to_string(), |c| format!("exited with {c}"));
        return Err(Error::tool(tool, package, format!("{status}: {}", stderr.trim())));
    }
    Ok(stderr)
}

/// `base.raw` and `base.qcow2` in `dir`, from the shared layers and the node's process from
/// the image config; `base.raw` stays if asked. Returns what the VM init needs that the base lacks.
fn base_disk(
    store: &Store,
    layers: &[ImageLayer],
    config: &ImageConfigBlob,
    dir: &Path,
    opts: &VmOptions,
) -> Result<Vec<String>> {
    let process = guest::process_file(config.bytes, &config.digest)?;
    let mut rootfs = rootfs::Rootfs::create(&dir.join(".rootfs"), opts.max_unpacked)?;
    for layer in layers {
        rootfs.apply(store, layer)?;
    }
    rootfs.add_mount_points()?;
    rootfs.add_file(guest::PROCESS_FILE, process.text.as_bytes(), 0o644)?;
    let missing = guest::missing_tools(&rootfs.tree, &process.user);
    let raw = dir.join("base.raw");
    ext4::make_ext4(&rootfs, &raw, &ext4::derived_uuid(layers), opts.epoch)?;
    fs::remove_dir_all(rootfs.host_path()).at(rootfs.host_path())?;
    let qcow = dir.join("base.qcow2");
    run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow), "qemu-img")?;
    if !opts.raw {
        fs::remove_file(&raw).at(&raw)?;
    }
    Ok(missing)
}

/// Node `id`'s ports forwarded to the host's loopback: the cluster's client ports, each
/// node's on its own host port (as `deploy compose` publishes them).
fn forwards(def: &ImageDef, id: u32) -> Result<Vec<(String, u16, u16)>> {
    // The one import up from the outputs: VMs publish the ports a Compose deployment would,
    // and deploy in turn writes its files through the outputs' `Destination`.
    let cluster = crate::deploy::Cluster::new(def, None)?;
    let published = crate::deploy::compose::publish(&cluster, 0)?;
    Ok(published
        .into_iter()
        .filter(|p| p.node == id)
        .map(|p| (p.port.protocol.clone(), p.host_port, p.port.number))
        .collect())
}

/// Node `id`'s overlay, seed and templates in `dir`.
fn node_files(dir: &Path, def: &ImageDef, id: u32, opts: &VmOptions) -> Result<()> {
    let disk = format!("node-{id}.qcow2");
    // Run in the output directory so the backing file is recorded relative: `base.qcow2`.
    let create = ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", &disk];
    run(Command::new("qemu-img").current_dir(dir).args(create), "qemu-img")?;
    let files = seed::seed_files(def, id);
    let iso = dir.join(format!("seed-node-{id}.iso"));
    seed::make_seed(&dir.join(format!(".seed-{id}")), &iso, &files, opts.epoch)?;
    let mac = network::mac(&def.name, id);
    let forwards = forwards(def, id)?;
    let template = templates::NodeTemplate {
        def,
        id,
        mac: &mac,
        machine: opts.machine,
        boot: &opts.boot,
        memory_mib: opts.memory_mib,
        libvirt_dir: opts.libvirt_dir.as_deref(),
        forwards: &forwards,
    };
    for (name, text, mode) in [
        (format!("user-data-node-{id}"), files.user, 0o644),
        (format!("node-{id}.xml"), template.domain_xml(), 0o644),
        (format!("node-{id}.sh"), template.qemu_script(), 0o755),
    ] {
        atomic_file::write(&dir.join(name), text.as_bytes(), Options::REPLACE.mode(mode))?;
    }
    Ok(())
}

/// What the templates reference that is not on this machine, what the guest lacks, and what
/// the cluster's network cannot do.
fn warnings(opts: &VmOptions, missing: &[String], network_problem: Option<String>) -> Vec<String> {
    let mut warnings = Vec::new();
    for tool in missing {
        warnings.push(format!("the base image lacks {tool}: the VM cannot run its node without it"));
    }
    for (what, path, flag) in [("kernel", &opts.boot.kernel, "--kernel"), ("initrd", &opts.boot.initrd, "--initrd")] {
        if !Path::new(path).is_file() {
            warnings.push(format!(
                "the templates boot the {what} {path}, which does not exist here: choose one with {flag} \
                 (node-N.sh also takes IMGBUILD_{})",
                what.to_uppercase()
            ));
        }
    }
    if let Some(problem) = network_problem {
        warnings.push(format!(
            "the VMs get no cluster network (network.xml hands out no addresses, network-config sets none): \
             {problem}; set the nodes' hosts in the image definition to addresses of one /24 network"
        ));
    }
    warnings
}

/// Writes the VM outputs of `nodes` into `opts.out`, replacing it whole. `shared` are the
/// layers every node of the cluster shares: a VM learns which node it is from its kernel
/// command line or seed, not from a layer.
pub(crate) fn write(
    store: &Store,
    def: &ImageDef,
    shared: &[ImageLayer],
    config: &ImageConfigBlob,
    nodes: &[Node],
    opts: &VmOptions,
) -> Result<VmSummary> {
    let temp = TempPath::beside(opts.out.path())?;
    fs::create_dir(temp.path()).at(temp.path())?;
    let missing = base_disk(store, shared, config, temp.path(), opts)?;
    for n in nodes {
        node_files(temp.path(), def, n.id, opts)?;
    }
    let (network, network_problem) = templates::network_xml(def);
    atomic_file::write(&temp.path().join("network.xml"), network.as_bytes(), Options::REPLACE.mode(0o644))?;
    Destination::record(temp.path())?;
    opts.out.replace_with(temp)?;
    summary(def, nodes, opts, warnings(opts, &missing, network_problem))
}

fn file_info(path: &Path) -> Result<VmFile> {
    Ok(VmFile { path: path.to_path_buf(), size: fs::metadata(path).at(path)?.len() })
}

fn summary(def: &ImageDef, nodes: &[Node], opts: &VmOptions, warnings: Vec<String>) -> Result<VmSummary> {
    let out = opts.out.path();
    let mut summary_nodes = Vec::new();
    for n in nodes {
        let id = n.id;
        summary_nodes.push(VmNode {
            id,
            host: n.host.clone(),
            mac: network::mac(&def.name, id),
            disk: file_info(&out.join(format!("node-{id}.qcow2")))?,
            seed: file_info(&out.join(format!("seed-node-{id}.iso")))?,
            domain: out.join(format!("node-{id}.xml")),
            script: out.join(format!("node-{id}.sh")),
        });
    }
    Ok(VmSummary {
        output: out.to_path_buf(),
        base: file_info(&out.join("base.qcow2"))?,
        base_raw: if opts.raw { Some(file_info(&out.join("base.raw"))?) } else { None },
        nodes: summary_nodes,
        network: out.join("network.xml"),
        boot: opts.boot.clone(),
        warnings,
    })
}

/// The kernel and initrd to boot when none is given: `/boot/vmlinuz` and `/boot/initrd.img`
/// if they exist, else the newest versioned pair in `/boot` (Debian installs only
/// `vmlinuz-VERSION`). The second value says which was chosen, for the user.
pub(crate) fn default_boot(boot_dir: &Path) -> (Boot, String) {
    let plain = Boot {
        kernel: boot_dir.join("vmlinuz").display().to_string(),
        initrd: boot_dir.join("initrd.img").display().to_string(),
    };
    if Path::new(&plain.kernel).exists() {
        return (plain, String::new());
    }
    let mut versions: Vec<String> = fs::read_dir(boot_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|v| boot_dir.join(format!("initrd.img-{v}")).is_file())
        .collect();
    versions.sort_by_key(|v| version_key(v));
    match versions.pop() {
        Some(v) => {
            let boot = Boot {
                kernel: boot_dir.join(format!("vmlinuz-{v}")).display().to_string(),
                initrd: boot_dir.join(format!("initrd.img-{v}")).display().to_string(),
            };
            let note = format!(
                "the templates boot the newest kernel in {}: {} (--kernel, --initrd to choose)",
                boot_dir.display(),
                boot.kernel
            );
            (boot, note)
        }
        None => (plain, String::new()),
    }
}

/// Orders versions as people read them: `6.1.0-10` after `6.1.0-9`.
fn version_key(version: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = version;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, after) = rest.split_at(digits);
        let text_len = after.len() - after.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
        let (text, next) = after.split_at(text_len);
        key.push((number.parse().unwrap_or(0), text.to_string()));
        rest = next;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_kernel_is_the_newest_versioned_pair_when_there_is_no_plain_one() {
        let tmp = tempfile::tempdir().unwrap();
        let boot = tmp.path();
        for v in ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-11-amd64"] {
            fs::write(boot.join(format!("vmlinuz-{v}")), "k").unwrap();
            if v != "6.1.0-11-amd64" {
                fs::write(boot.join(format!("initrd.img-{v}")), "i").unwrap();
            }
        }
        let (chosen, note) = default_boot(boot);
        assert!(chosen.kernel.ends_with("vmlinuz-6.1.0-10-amd64"), "{chosen:?}: 11 has no initrd");
        assert!(chosen.initrd.ends_with("initrd.img-6.1.0-10-amd64"));
        assert!(note.contains("newest kernel"), "{note}");
        fs::write(boot.join("vmlinuz"), "k").unwrap();
        let (chosen, note) = default_boot(boot);
        assert!(chosen.kernel.ends_with("/vmlinuz") && note.is_empty());
    }
}

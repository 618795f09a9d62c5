//! `imgbuild vm --id N | --all`: VM disks and templates from the same layers as the images.

use std::path::{Path, PathBuf};

use crate::build::build;
use crate::error::{Error, Result};
use crate::output::vm::{self, Boot, Machine, VmOptions};
use crate::output::{Destination, Force, Shape};
use crate::project::Project;

use super::build::ImageChoice;
use super::GlobalArgs;

#[derive(clap::Args)]
pub struct VmArgs {
    /// Write the per-node disk, seed and templates of this node only
    #[arg(long, conflicts_with = "all")]
    pub id: Option<u32>,
    /// Write them for every node of the cluster
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub choice: ImageChoice,
    /// Output directory, replaced whole [default: out/IMAGE-vm]
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace the output even if it changed since imgbuild wrote it (a booted node's overlay
    /// holds that node's state, which is then lost)
    #[arg(long)]
    pub force: bool,
    /// Also keep the base disk as raw (base.raw)
    #[arg(long)]
    pub raw: bool,
    /// The kernel the templates boot (the disk holds no boot loader) [default: /boot/vmlinuz,
    /// else the newest /boot/vmlinuz-VERSION]
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<String>,
    /// The initrd the templates boot [default: the kernel's]
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<String>,
    /// Memory of each VM
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub memory: u32,
    /// Where the libvirt templates expect the disks [default: /var/lib/libvirt/images/IMAGE]
    #[arg(long, value_name = "DIR")]
    pub libvirt_dir: Option<String>,
}

/// The kernel and initrd: as given, else the host's (saying which, unless both were given).
fn boot(args: &VmArgs, notes: &mut Vec<String>) -> Boot {
    let (default, note) = vm::default_boot(Path::new("/boot"));
    if args.kernel.is_none() || args.initrd.is_none() {
        notes.extend((!note.is_empty()).then_some(note));
    }
    Boot {
        kernel: args.kernel.clone().unwrap_or(default.kernel),
        initrd: args.initrd.clone().unwrap_or(default.initrd),
    }
}

pub(super) fn run(global: &GlobalArgs, args: &VmArgs) -> Result<()> {
    if args.id.is_none() && !args.all {
        return Err(Error::Usage("say which VMs: --id N or --all".into()));
    }
    let settings = super::build::settings(global, &args.choice)?;
    let [platform] = settings.platforms.as_slice() else {
        return Err(Error::Usage("VM disks are made for one platform; pass a single --platform".into()));
    };
    let machine = Machine::for_platform(platform)?;
    let project = Project::load(&global.project, args.choice.image.as_deref())?;
    let def = &project.image;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => crate::tree_path::default_out(&format!("{}-vm", def.name))?,
    };
    // Before any work: only an output of imgbuild's, unchanged unless --force, is replaced.
    let force = if args.force { Force::Yes } else { Force::No };
    let dest = Destination::check(&out, Shape::Directory, force)?;
    let mut notes = Vec::new();
    let boot = boot(args, &mut notes);
    vm::check_values(&boot, args.libvirt_dir.as_deref())?;
    // Before the build, which can take minutes: the tools that make the disks must be there.
    for tool in vm::TOOLS {
        crate::host::require_program(tool, "imgbuild vm")?;
    }
    let store = global.open_store()?;
    let _building = store.build_lock_shared()?;
    let reporter = global.reporter();
    let nodes: Vec<u32> = args.id.into_iter().collect();
    let result = build(&store, def, &nodes, &settings, reporter.as_ref())?;
    reporter.status("writing the VM disks");
    let opts = VmOptions {
        out: dest,
        machine,
        raw: args.raw,
        boot,
        memory_mib: args.memory,
        libvirt_dir: args.libvirt_dir.clone(),
        epoch: settings.layer.epoch,
        max_unpacked: settings.layer.max_unpacked,
    };
    let [shared] = result.shared.as_slice() else {
        return Err(Error::Internal("a VM build has one platform".into()));
    };
    let nodes: Vec<_> = result.nodes.iter().map(|n| n.node.clone()).collect();
    // The node-less image's config: what a container engine runs, whichever node it is.
    let [image] = result.cluster.platforms.as_slice() else {
        return Err(Error::Internal("a VM build has one platform".into()));
    };
    let bytes = store.read_blob(&image.config_digest)?;
    let config = vm::ImageConfigBlob { bytes: &bytes, digest: image.config_digest.to_string() };
    let summary = vm::write(&store, def, &shared.layers, &config, &nodes, &opts)?;
    store.add_root(&out, result.needs(&store, def, &result.images()))?;
    if !global.quiet && !global.json {
        for note in &notes {
            errln!("note: {note}");
        }
    }
    for warning in &summary.warnings {
        errln!("warning: {}", crate::error::printable(warning));
    }
    if global.json {
        super::print_json(&serde_json::to_value(&summary).expect("serializes"))?;
    } else {
        outln!("{}\t{} bytes", summary.base.path.display(), summary.base.size)?;
        for n in &summary.nodes {
            outln!("{}\t{} bytes\t{}", n.disk.path.display(), n.disk.size, n.script.display())?;
        }
    }
    Ok(())
}

//! The base disk's ext4 file system: `mke2fs -d` copies the rootfs the model wrote on the host,
//! then `debugfs` sets every inode's owner, mode and times from the model (never from the host
//! copy, whose modes are owner-only and whose times are today's).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use super::rootfs::{Meta, Rootfs};
use super::run;
use crate::digest::Sha256Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::ImageLayer;
use crate::tree::{Kind, Tree, TreePath};

/// A UUID (version 4 layout) derived from the layers, so the same layers give the same disk.
pub(crate) fn derived_uuid(layers: &[ImageLayer]) -> String {
    let ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
    let h = Sha256Digest::of(ids.join(",").as_bytes()).hex();
    let mut b = hex::decode(&h[..32]).expect("hex");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
}

/// A path as one quoted debugfs argument: debugfs doubles a quote inside quotes (a backslash
/// is a plain character). Names with control characters never reach here (the rootfs refuses
/// them): debugfs reads one command per line.
fn debugfs_quote(path: &TreePath) -> String {
    let text = String::from_utf8_lossy(path.as_bytes());
    format!("\"/{}\"", text.replace('"', "\"\""))
}

/// The full `i_mode` of a node: its type bits and its permission bits.
fn inode_mode(kind: &Kind, meta: &Meta) -> u32 {
    match kind {
        Kind::Dir => 0o040000 | meta.mode,
        Kind::File | Kind::Special => 0o100000 | meta.mode,
        Kind::Symlink(_) => 0o120777,
    }
}

/// The bytes of regular file content, each inode counted once, and the number of paths.
fn tree_size(tree: &Tree<Meta>) -> (u64, u64) {
    let mut inodes = BTreeMap::new();
    for (_, node) in tree.iter().filter(|(_, n)| n.kind == Kind::File) {
        inodes.insert(node.meta.inode, node.meta.size);
    }
    (inodes.values().sum(), tree.len() as u64)
}

/// The debugfs commands that give every path of the model its owner, mode and times.
fn fix_commands(tree: &Tree<Meta>, epoch: u64) -> String {
    let mut cmds = String::new();
    for (path, node) in tree.iter() {
        let q = if path.is_root() { "/".to_string() } else { debugfs_quote(path) };
        for field in ["atime", "mtime", "ctime", "crtime"] {
            cmds.push_str(&format!("sif {q} {field} {epoch}\n"));
        }
        let m = &node.meta;
        cmds.push_str(&format!("sif {q} uid {}\nsif {q} gid {}\n", m.uid, m.gid));
        cmds.push_str(&format!("sif {q} mode 0{:o}\n", inode_mode(&node.kind, m)));
    }
    cmds
}

/// e2fsprogs in a fixed setting: its built-in defaults rather than the host's `mke2fs.conf`,
/// the C locale (mke2fs -d sorts names with `strcoll`), and the given time.
fn e2fs_tool(name: &str, epoch_s: &str) -> Command {
    let mut cmd = Command::new(name);
    cmd.env("MKE2FS_CONFIG", "/nonexistent/imgbuild-uses-the-built-in-defaults")
        .env("LC_ALL", "C")
        .env("E2FSPROGS_FAKE_TIME", epoch_s);
    cmd
}

/// The ext4 image of `rootfs`, byte-identical for identical models.
pub(crate) fn make_ext4(rootfs: &Rootfs, image: &Path, uuid: &str, epoch: u64) -> Result<()> {
    let (bytes, paths) = tree_size(&rootfs.tree);
    let size_mib = (bytes + bytes / 4) / (1 << 20) + 64;
    let inodes = paths * 3 / 2 + 1024;
    // e2fsprogs reads a fake time of 0 as "none" and would use the clock: the superblock's own
    // times are therefore 1970-01-01T00:00:01 when the epoch is 0 (inodes get the epoch itself).
    let epoch_s = epoch.max(1).to_string();
    let mut mke2fs = e2fs_tool("mke2fs", &epoch_s);
    mke2fs
        .args(["-q", "-F", "-t", "ext4", "-L", "imgbuild-root", "-b", "4096", "-m", "0"])
        .args(["-U", uuid, "-E", &format!("hash_seed={uuid},root_owner=0:0"), "-N", &inodes.to_string(), "-d"])
        .arg(rootfs.host_path())
        .arg(image)
        .arg(format!("{size_mib}M"));
    run(&mut mke2fs, "mke2fs")?;
    let cmd_file = image.with_extension("debugfs");
    let commands = fix_commands(&rootfs.tree, epoch);
    crate::atomic_file::write(&cmd_file, commands.as_bytes(), crate::atomic_file::Options::REPLACE)?;
    let mut debugfs = e2fs_tool("debugfs", &epoch_s);
    debugfs.arg("-w").arg("-f").arg(&cmd_file).arg(image);
    // debugfs goes on after a failed command: anything after its banner is one.
    let stderr = run(&mut debugfs, "debugfs")?;
    if let Some(line) = stderr.lines().find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()) {
        return Err(Error::tool(
            "debugfs",
            crate::host::package_of("debugfs"),
            format!("could not set owners, modes and times: {line}"),
        ));
    }
    fs::remove_file(&cmd_file).at(&cmd_file)?;
    // The superblock counts the kilobytes ever written; the tools' I/O is not part of the content.
    let mut reset = e2fs_tool("debugfs", &epoch_s);
    reset.args(["-w", "-R", "ssv kbytes_written 0"]).arg(image);
    run(&mut reset, "debugfs").map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debugfs_arguments_double_quotes_and_keep_everything_else() {
        let p = |s: &str| TreePath::from_member(s.as_bytes()).unwrap();
        assert_eq!(debugfs_quote(&p("a\"b/c\\d e")), "\"/a\"\"b/c\\d e\"");
    }

    #[test]
    fn modes_carry_the_type_and_the_permission_bits() {
        let meta = Meta { mode: 0o4755, ..Meta::default() };
        assert_eq!(inode_mode(&Kind::File, &meta), 0o104755);
        assert_eq!(inode_mode(&Kind::Dir, &Meta::default()), 0o040755);
        assert_eq!(inode_mode(&Kind::Symlink(b"x".to_vec()), &meta), 0o120777);
    }
}

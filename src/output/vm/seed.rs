//! A node's NoCloud seed (`cidata`): `meta-data` naming the node, its `network-config` and
//! cloud-init `user-data`, as an ISO 9660 volume whose bytes depend on nothing but the node (not
//! the umask, the user or the clock).
//!
//! The VM init reads the seed without mounting it (a base need not have `mount`, nor its kernel
//! an ISO 9660 driver): the volume's system area, the first 32 KiB that ISO 9660 leaves to the
//! writer, holds `meta-data` and `network-config` once more as plain text ([`system_area`]),
//! which `read` in sh takes line by line from the raw device. cloud-init reads the files.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::run;
use crate::error::{Error, IoContext, Result};
use crate::image_def::ImageDef;
use crate::yaml;

/// The seed's `meta-data` and `user-data` for node `id`: YAML written by [`yaml::document`],
/// every string a double-quoted scalar with its escapes, so no name can end a value or start
/// another key. `imgbuild_node_id` stays a plain number (the entrypoint reads that line).
pub(crate) fn seed_files(def: &ImageDef, id: u32) -> SeedFiles {
    let name = &def.name;
    let meta = yaml::document(&serde_json::json!({
        "instance-id": format!("{name}-node-{id}"),
        "local-hostname": format!("{name}-{id}"),
        "imgbuild_node_id": id,
    }));
    let config = yaml::document(&serde_json::json!({
        "hostname": format!("{name}-{id}"),
        "write_files": [{
            "path": "/etc/imgbuild/node-id",
            "content": format!("{id}\n"),
            "permissions": "0644",
            "owner": "root:root",
        }],
    }));
    let user = format!(
        "#cloud-config\n# Node {id} of this cluster, written by imgbuild. imgbuild-init reads the id from\n# meta-data (imgbuild_node_id) or the kernel command line (imgbuild.node={id}).\n{config}"
    );
    SeedFiles { meta, network: super::guest::network_config(def, id), user }
}

/// The files of a node's seed.
pub(crate) struct SeedFiles {
    pub meta: String,
    pub network: String,
    pub user: String,
}

/// The first line of the system area, which the VM init looks for on each candidate device.
pub(crate) const SYSTEM_AREA_MAGIC: &str = "imgbuild-seed 1";
/// The line that ends each file in the system area (no line of a file is this).
const END_OF_FILE: &str = "imgbuild-seed eof";
/// The line after the last file.
const END: &str = "imgbuild-seed end";
/// ISO 9660 leaves its first 16 sectors to the writer.
const SYSTEM_AREA_SIZE: usize = 32 * 1024;

/// The seed's system area: the magic line, then each file as a `file NAME` line, its lines and
/// an end-of-file line, then an end line; NUL bytes after. The files are imgbuild's own YAML: never a NUL, never the end line.
pub(crate) fn system_area(files: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut text = format!("{SYSTEM_AREA_MAGIC}\n");
    for (name, content) in files {
        if content.lines().any(|l| l.starts_with("imgbuild-seed ")) || content.contains('\0') {
            return Err(Error::Internal(format!("the seed's {name} cannot be framed in the system area")));
        }
        text.push_str(&format!("file {name}\n{content}"));
        if !content.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{END_OF_FILE}\n"));
    }
    text.push_str(&format!("{END}\n"));
    let mut bytes = text.into_bytes();
    if bytes.len() > SYSTEM_AREA_SIZE {
        return Err(Error::Internal(format!("the seed's system area would be {} bytes", bytes.len())));
    }
    bytes.resize(SYSTEM_AREA_SIZE, 0);
    Ok(bytes)
}

/// Writes the seed ISO `iso` from its files, staged in the new directory `staging`.
pub(crate) fn make_seed(staging: &Path, iso: &Path, files: &SeedFiles, epoch: u64) -> Result<()> {
    fs::create_dir(staging).at(staging)?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    // The mode and the times set, so nothing of the host (umask, clock) is recorded.
    let options = crate::atomic_file::Options { time: Some(t), ..crate::atomic_file::Options::REPLACE.mode(0o644) };
    let named = [("meta-data", files.meta.as_str()), ("network-config", files.network.as_str())];
    let area = staging.join("system-area");
    crate::atomic_file::write(&area, &system_area(&named)?, options)?;
    for (name, text) in named.into_iter().chain([("user-data", files.user.as_str())]) {
        crate::atomic_file::write(&staging.join(name), text.as_bytes(), options)?;
    }
    let mut xorriso = Command::new("xorriso");
    // `-r` (rational Rock Ridge): owner 0:0 and modes readable by all, whoever runs this.
    xorriso
        .args(["-as", "mkisofs", "-quiet", "-volid", "cidata", "-joliet", "-r", "-G"])
        .arg(&area)
        .arg("-o")
        .arg(iso)
        .arg(staging.join("meta-data"))
        .arg(staging.join("network-config"))
        .arg(staging.join("user-data"))
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C");
    run(&mut xorriso, "xorriso")?;
    fs::remove_dir_all(staging).at(staging)
}

//! A node's NoCloud seed (`cidata`): `meta-data` naming the node and cloud-init `user-data`, as
//! an ISO 9660 volume whose bytes depend on nothing but the node (not the umask, the user or
//! the clock).

use std::fs;
use std::path::Path;
use std::process::Command;

use super::run;
use crate::deploy::yaml;
use crate::error::{IoContext, Result};
use crate::image_def::ImageDef;

/// The seed's `meta-data` and `user-data` for node `id`: YAML written by [`yaml::document`],
/// every string a double-quoted scalar with its escapes, so no name can end a value or start
/// another key. `imgbuild_node_id` stays a plain number (the entrypoint reads that line).
pub(crate) fn seed_files(def: &ImageDef, id: u32) -> (String, String) {
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
    (meta, user)
}

/// Writes the seed ISO `iso` from the two files, staged in the new directory `staging`.
pub(crate) fn make_seed(staging: &Path, iso: &Path, meta: &str, user: &str, epoch: u64) -> Result<()> {
    fs::create_dir(staging).at(staging)?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    for (name, text) in [("meta-data", meta), ("user-data", user)] {
        // The mode and the times set, so nothing of the host (umask, clock) is recorded.
        let options = crate::atomic_file::Options { time: Some(t), ..crate::atomic_file::Options::REPLACE.mode(0o644) };
        crate::atomic_file::write(&staging.join(name), text.as_bytes(), options)?;
    }
    let mut xorriso = Command::new("xorriso");
    // `-r` (rational Rock Ridge): owner 0:0 and modes readable by all, whoever runs this.
    xorriso
        .args(["-as", "mkisofs", "-quiet", "-volid", "cidata", "-joliet", "-r", "-o"])
        .arg(iso)
        .arg(staging.join("meta-data"))
        .arg(staging.join("user-data"))
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C");
    run(&mut xorriso, "xorriso")?;
    fs::remove_dir_all(staging).at(staging)
}

//! The small layers imgbuild writes itself, from the most to the least widely shared:
//!
//! - the *runtime layer*: the entrypoint (`imgbuild-init`), the same for every cluster built by
//!   one imgbuild version;
//! - the *cluster layer*, shared by every node: the cluster definition as a shell-readable file
//!   and the configuration templates (a change of topology changes only this layer);
//! - the *identity layer*, one per node: only the id baked by `imgbuild node --id N`, which
//!   the entrypoint uses last, after what the node learns at boot.

use std::collections::BTreeMap;

use crate::image_def::{ImageDef, Node, DEFAULT_ENTRYPOINT};
use crate::layer::GeneratedEntry;

pub const ENTRYPOINT_SCRIPT: &str = include_str!("assets/imgbuild-init.sh");
/// PID 1 of a node booted as a VM; it runs the same entrypoint.
pub const VM_INIT_SCRIPT: &str = include_str!("assets/imgbuild-vm-init.sh");
pub const VM_INIT: &str = "/usr/local/sbin/imgbuild-vm-init";
pub const CONF_DIR: &str = "etc/imgbuild";

/// Quotes a value for POSIX sh.
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `/usr/local/zookeeper/conf/zoo.cfg` → `_usr_local_zookeeper_conf_zoo_cfg`, as the entrypoint derives it.
fn mode_var(target: &str) -> String {
    target.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The cluster definition as the entrypoint reads it (`. /etc/imgbuild/cluster.env`).
pub fn cluster_env(def: &ImageDef) -> String {
    let mut lines = vec![
        "# Written by imgbuild: the cluster this image belongs to. Read by imgbuild-init at boot.".to_string(),
        format!("IMGBUILD_CLUSTER={}", sh_quote(&def.name)),
        format!(
            "IMGBUILD_NODES={}",
            sh_quote(&def.nodes.iter().map(|n| n.id.to_string()).collect::<Vec<_>>().join(" "))
        ),
    ];
    for n in &def.nodes {
        lines.push(format!("IMGBUILD_HOST_{}={}", n.id, sh_quote(&n.host)));
    }
    // Variables keep a value given in the environment at boot.
    for (k, v) in &def.vars {
        lines.push(format!("[ -n \"${{IMGBUILD_VAR_{k}+set}}\" ] || IMGBUILD_VAR_{k}={}", sh_quote(v)));
    }
    for (k, l) in &def.lists {
        lines.push(format!("IMGBUILD_LIST_{k}_ITEM={}", sh_quote(&l.item)));
        lines.push(format!("IMGBUILD_LIST_{k}_SELF={}", sh_quote(l.self_item.as_deref().unwrap_or(""))));
        lines.push(format!("IMGBUILD_LIST_{k}_JOIN={}", sh_quote(&l.join.replace('\n', r"\n"))));
    }
    let targets: Vec<String> = def.templates.iter().map(|t| format!("/{}", t.target)).collect();
    lines.push(format!("IMGBUILD_TEMPLATES={}", sh_quote(&targets.join(" "))));
    for t in &def.templates {
        lines.push(format!(
            "IMGBUILD_MODE_{}={}",
            mode_var(&format!("/{}", t.target)),
            sh_quote(&format!("{:o}", t.mode))
        ));
    }
    let guarded: Vec<String> = def.templates.iter().filter(|t| t.guard).map(|t| format!("/{}", t.target)).collect();
    lines.push(format!("IMGBUILD_GUARDED={}", sh_quote(&guarded.join(" "))));
    let checks: Vec<String> = def.identity_checks.iter().map(|c| format!("{}:{}", c.file, c.key)).collect();
    lines.push(format!("IMGBUILD_ID_CHECKS={}", sh_quote(&checks.join(" "))));
    let data_dirs: Vec<&str> = def.services.iter().flat_map(|s| s.data_dirs.iter().map(String::as_str)).collect();
    lines.push(format!("IMGBUILD_DATA_DIRS={}", sh_quote(&data_dirs.join(" "))));
    let names: Vec<&str> = def.services.iter().map(|s| s.name.as_str()).collect();
    lines.push(format!("IMGBUILD_DEFAULT_SERVICES={}", sh_quote(&names.join(" "))));
    for s in &def.services {
        let words: Vec<String> = s.command.iter().map(|w| sh_quote(w)).collect();
        lines.push(format!("IMGBUILD_SERVICE_{}={}", s.name, sh_quote(&words.join(" "))));
    }
    lines.push(String::new());
    lines.join("\n")
}

/// Files of the runtime layer, or `None` when the image has an entrypoint of its own.
pub fn runtime_layer_files(def: &ImageDef) -> Option<BTreeMap<String, GeneratedEntry>> {
    (def.config.entrypoint.first().map(String::as_str) == Some(DEFAULT_ENTRYPOINT)).then(|| {
        let entry = GeneratedEntry::File { data: ENTRYPOINT_SCRIPT.as_bytes().to_vec(), mode: 0o755 };
        let vm_init = GeneratedEntry::File { data: VM_INIT_SCRIPT.as_bytes().to_vec(), mode: 0o755 };
        BTreeMap::from([
            (DEFAULT_ENTRYPOINT.trim_start_matches('/').to_string(), entry),
            (VM_INIT.trim_start_matches('/').to_string(), vm_init),
        ])
    })
}

/// Files of the layer every node of the cluster shares.
pub fn cluster_layer_files(def: &ImageDef) -> BTreeMap<String, GeneratedEntry> {
    let mut files = BTreeMap::new();
    files.insert(
        format!("{CONF_DIR}/cluster.env"),
        GeneratedEntry::File { data: cluster_env(def).into_bytes(), mode: 0o644 },
    );
    for t in &def.templates {
        files.insert(
            format!("{CONF_DIR}/templates/{}", t.target),
            GeneratedEntry::File { data: t.text.clone().into_bytes(), mode: 0o644 },
        );
    }
    files
}

/// Files of one node's identity layer.
pub fn identity_layer_files(node: &Node) -> BTreeMap<String, GeneratedEntry> {
    let mut files = BTreeMap::new();
    files.insert(
        format!("{CONF_DIR}/node-id"),
        GeneratedEntry::File { data: format!("{}\n", node.id).into_bytes(), mode: 0o644 },
    );
    files
}

#[cfg(test)]
mod tests {
    use super::sh_quote;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}

//! The small layers imgbuild writes itself, from the most to the least widely shared:
//!
//! - the *runtime layer*: the entrypoint (`imgbuild-init`), the same for every cluster built by
//!   one imgbuild version;
//! - the *cluster layer*, shared by every node: the cluster definition as a shell-readable file
//!   and the configuration templates (a change of topology changes only this layer);
//! - the *identity layer*, one per node: only the id baked by `imgbuild node --id N`, which
//!   the entrypoint uses last, after what the node learns at boot.

use std::collections::BTreeMap;

use crate::entrypoint::{sh_quote, CONF_DIR, CONF_DIR_OPAQUE, DEFAULT_ENTRYPOINT, VM_INIT, VM_INIT_SCRIPT};
use crate::image_def::{ImageDef, Node};
use crate::layer::GeneratedEntry;

/// Kept here for the tests, which boot the entrypoint beside the layers this module writes.
pub use crate::entrypoint::ENTRYPOINT_SCRIPT;

/// The cluster definition as the entrypoint reads it (`. /etc/imgbuild/cluster.env`): only
/// assignments of quoted values, every variable the entrypoint reads assigned (so that none
/// can come from the environment), names that hold no value from the definition but names
/// the definition's parser checked.
pub(crate) fn cluster_env(def: &ImageDef) -> String {
    let mut lines = vec![
        "# Written by imgbuild: the cluster this image belongs to. Read by imgbuild-init at boot.".to_string(),
        format!("IMGBUILD_CLUSTER={}", sh_quote(&def.name)),
        format!("IMGBUILD_NODES={}", sh_quote(&words(def.nodes.iter().map(|n| n.id.to_string())))),
    ];
    for n in &def.nodes {
        lines.push(format!("IMGBUILD_HOST_{}={}", n.id, sh_quote(&n.host)));
    }
    // A var's value at boot is IMGBUILD_VAR_<name> when set, else its default.
    lines.push(format!("IMGBUILD_VARS={}", sh_quote(&words(def.vars.keys()))));
    for (k, v) in &def.vars {
        lines.push(format!("IMGBUILD_DEFAULT_VAR_{k}={}", sh_quote(v)));
    }
    lines.push(format!("IMGBUILD_LISTS={}", sh_quote(&words(def.lists.keys()))));
    for (k, l) in &def.lists {
        lines.push(format!("IMGBUILD_LIST_{k}_ITEM={}", sh_quote(&l.item)));
        lines.push(format!("IMGBUILD_LIST_{k}_HAS_SELF={}", u8::from(l.self_item.is_some())));
        lines.push(format!("IMGBUILD_LIST_{k}_SELF={}", sh_quote(l.self_item.as_deref().unwrap_or(""))));
        lines.push(format!("IMGBUILD_LIST_{k}_JOIN={}", sh_quote(&l.join)));
    }
    lines.push(format!(
        "IMGBUILD_TEMPLATES={}",
        sh_quote(&words(def.templates.iter().map(|t| format!("/{}", t.target))))
    ));
    // Each template's mode beside its target: targets hold no `:` (image paths are checked).
    let modes = def.templates.iter().map(|t| format!("/{}:{:o}", t.target, t.mode));
    lines.push(format!("IMGBUILD_TEMPLATE_MODES={}", sh_quote(&words(modes))));
    let guarded = def.templates.iter().filter(|t| t.guard).map(|t| format!("/{}", t.target));
    lines.push(format!("IMGBUILD_GUARDED={}", sh_quote(&words(guarded))));
    let checks = def.identity_checks.iter().map(|c| format!("{}:{}", c.file, c.key));
    lines.push(format!("IMGBUILD_ID_CHECKS={}", sh_quote(&words(checks))));
    let data_dirs = def.services.iter().flat_map(|s| s.data_dirs.iter());
    lines.push(format!("IMGBUILD_DATA_DIRS={}", sh_quote(&words(data_dirs))));
    lines.push(format!("IMGBUILD_DEFAULT_SERVICES={}", sh_quote(&words(def.services.iter().map(|s| &s.name)))));
    // A command is its words one by one, so that the entrypoint never parses it as shell.
    for s in &def.services {
        lines.push(format!("IMGBUILD_SERVICE_{}_ARGC={}", s.name, s.command.len()));
        for (i, word) in s.command.iter().enumerate() {
            lines.push(format!("IMGBUILD_SERVICE_{}_ARG{}={}", s.name, i + 1, sh_quote(word)));
        }
    }
    lines.push(String::new());
    lines.join("\n")
}

/// Items joined by spaces, as the entrypoint iterates them.
fn words<T: AsRef<str>>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| i.as_ref().to_string()).collect::<Vec<_>>().join(" ")
}

/// Files of the runtime layer, or `None` when the image has an entrypoint of its own.
pub(crate) fn runtime_layer_files(def: &ImageDef) -> Option<BTreeMap<String, GeneratedEntry>> {
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
    files.insert(CONF_DIR_OPAQUE.to_string(), GeneratedEntry::File { data: Vec::new(), mode: 0o644 });
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
pub(crate) fn identity_layer_files(node: &Node) -> BTreeMap<String, GeneratedEntry> {
    let mut files = BTreeMap::new();
    files.insert(
        format!("{CONF_DIR}/node-id"),
        GeneratedEntry::File { data: format!("{}\n", node.id).into_bytes(), mode: 0o644 },
    );
    files
}

//! The entrypoint contract: what every node image holds at imgbuild's own paths, and what the
//! entrypoint reads at boot. A leaf, so that recipes, definitions and the layer normaliser can
//! keep those paths free without depending on the layers that write them (`node`).

/// The entrypoint of a node image, unless its definition names another.
pub(crate) const DEFAULT_ENTRYPOINT: &str = "/usr/local/bin/imgbuild-init";
pub const ENTRYPOINT_SCRIPT: &str = include_str!("assets/imgbuild-init.sh");
/// PID 1 of a node booted as a VM; it runs the same entrypoint.
pub(crate) const VM_INIT_SCRIPT: &str = include_str!("assets/imgbuild-vm-init.sh");
pub(crate) const VM_INIT: &str = "/usr/local/sbin/imgbuild-vm-init";
pub(crate) const CONF_DIR: &str = "etc/imgbuild";
/// An OCI opaque whiteout: the cluster layer makes `/etc/imgbuild/` hold only what imgbuild
/// writes there, hiding whatever a base image or a recipe put in it (it applies to lower layers
/// only, so the cluster layer's own files and the identity layer above stay).
pub(crate) const CONF_DIR_OPAQUE: &str = "etc/imgbuild/.wh..wh..opq";

/// imgbuild's own paths in every node image (without the leading `/`): the cluster layer's
/// directory and the entrypoints. No recipe, template, data directory or volume may write them.
pub(crate) fn own_paths() -> [&'static str; 3] {
    [CONF_DIR, DEFAULT_ENTRYPOINT, VM_INIT].map(|p| p.trim_start_matches('/'))
}

/// What the entrypoint reads from its environment at boot besides `IMGBUILD_*` (see
/// `src/assets/imgbuild-init.sh`).
const READ_AT_BOOT: &[&str] = &["NODE_ID", "ZOO_MY_ID", "KAFKA_BROKER_ID", "PEERS", "ADVERTISED_HOST", "HOSTNAME"];

/// Why `name` cannot be a variable of an image's environment (a recipe's `env`, the
/// definition's `[config] env`), if it cannot: it must be a name a process can be given, and
/// not one the entrypoint reads at boot, which would give every container of the image the
/// same identity or override (the image tagged `node-0` booting as node 1).
pub(crate) fn env_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.contains('=') || name.chars().any(char::is_control) {
        return Some(format!(
            "`{}` is not a variable name (not empty, no `=`, no control characters)",
            crate::error::escape(name)
        ));
    }
    (READ_AT_BOOT.contains(&name) || name.starts_with("IMGBUILD_")).then(|| {
        format!(
            "`{name}` is read by the entrypoint at boot ({}, IMGBUILD_*): set it when a node runs, not in the image",
            READ_AT_BOOT.join(", ")
        )
    })
}

/// Quotes a value for POSIX sh.
pub(crate) fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::sh_quote;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}

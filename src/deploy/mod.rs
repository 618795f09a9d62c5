//! Deployments of a built cluster: a Compose file for one host, Kubernetes manifests for many.
//! Both are written from the cluster definition alone (topology, ports, volumes, stop signal)
//! plus where the images are; the node's identity still comes from the entrypoint at boot.

pub(crate) mod compose;
pub(crate) mod kubernetes;

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::image_def::template::Piece;
use crate::image_def::{ImageDef, Node};

/// How long a node gets to stop cleanly (ZooKeeper and Kafka flush and hand over leadership)
/// before it is killed.
pub(crate) const STOP_GRACE_SECONDS: u64 = 60;

/// The template variable the seed's definitions listen on: set to every address when each node
/// has a network namespace of its own.
pub(crate) const BIND_VAR: &str = "bind_address";

/// A port of the image: number and protocol (`tcp`, `udp`, `sctp`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Port {
    pub number: u16,
    pub protocol: String,
}

impl Port {
    /// A port name Kubernetes accepts (an IANA service name: 15 characters, a letter in it).
    pub(crate) fn name(&self) -> String {
        format!("{}-{}", self.protocol, self.number)
    }
}

/// What a deployment runs: the definition and the nodes of it that run.
pub(crate) struct Cluster<'a> {
    pub def: &'a ImageDef,
    /// The first `--replicas` nodes of the definition (all of them by default).
    pub running: &'a [Node],
}

impl<'a> Cluster<'a> {
    /// The nodes to run: `replicas` other than the definition's count only when the definition
    /// says the cluster is `scalable`, and never more nodes than it names (each node's id and
    /// address are baked into the image the entrypoint reads).
    pub(crate) fn new(def: &'a ImageDef, replicas: Option<usize>) -> Result<Cluster<'a>> {
        let defined = def.nodes.len();
        let n = replicas.unwrap_or(defined);
        if n == 0 {
            return Err(Error::Usage("--replicas must be at least 1".into()));
        }
        if n > defined {
            return Err(Error::Usage(format!(
                "--replicas {n}: cluster `{}` names {defined} node(s), and a node's id and peers are baked into \
                 the image; add [[cluster.node]] entries to {}, rebuild, and roll the new configuration out \
                 (see docs/running.md, \"Growing the cluster\")",
                def.name,
                def.file.display()
            )));
        }
        if n != defined && !def.scalable {
            return Err(Error::Usage(format!(
                "--replicas {n}: cluster `{}` is defined with {defined} nodes and does not allow running fewer \
                 (set `scalable = true` under [cluster] in {} if its services work with fewer members)",
                def.name,
                def.file.display()
            )));
        }
        Ok(Cluster { def, running: &def.nodes[..n] })
    }

    /// A DNS label for the cluster (Kubernetes object names, Compose service names): the
    /// definition's name in lowercase letters, digits and `-`, starting with a letter.
    pub(crate) fn label(&self) -> String {
        let mut label = dns_label(&self.def.name, 40);
        if !label.starts_with(|c: char| c.is_ascii_lowercase()) {
            label = format!("c-{label}").trim_end_matches('-').to_string();
        }
        label
    }

    /// Ports the clients of the cluster use: the image's ports, less those a node binds for
    /// its peers only (the ports named by a list's `self_item`, a node's own entry such as
    /// ZooKeeper's `server.N=0.0.0.0:2888:3888`).
    pub(crate) fn client_ports(&self) -> Vec<Port> {
        let peer: BTreeSet<u16> = self
            .def
            .lists
            .values()
            .filter_map(|l| l.self_item.as_deref())
            .flat_map(|text| crate::image_def::template::parse(text).unwrap_or_default())
            .filter_map(|piece| match piece {
                Piece::Reference { name, .. } => self.def.vars.get(name),
                Piece::Text(_) => None,
            })
            .filter_map(|value| value.trim().parse().ok())
            .collect();
        self.ports().into_iter().filter(|p| !peer.contains(&p.number)).collect()
    }

    /// Every port of the image.
    pub(crate) fn ports(&self) -> Vec<Port> {
        let mut ports: Vec<Port> = self
            .def
            .config
            .ports
            .iter()
            .filter_map(|p| {
                let (number, protocol) = p.split_once('/')?;
                Some(Port { number: number.parse().ok()?, protocol: protocol.to_string() })
            })
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }

    /// `PEERS` (`ID=HOST,…`): every node of the definition, running or not (so that the nodes
    /// left out by `--replicas` can join as they are), named by `host_of(index, node)`.
    pub(crate) fn peers(&self, host_of: impl Fn(usize, &Node) -> String) -> String {
        self.def
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{}={}", n.id, host_of(i, n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether the definition has the variable that chooses the listening address.
    pub(crate) fn binds_by_variable(&self) -> bool {
        self.def.vars.contains_key(BIND_VAR)
    }

    /// Each volume of the image with a name for it (a DNS label, unique in the cluster).
    pub(crate) fn volumes(&self) -> Vec<(String, String)> {
        let mut named: Vec<(String, String)> = Vec::new();
        for (i, path) in self.def.config.volumes.iter().enumerate() {
            let base = dns_label(path, 40);
            let mut name = base.clone();
            let mut suffix = i;
            while name.is_empty() || named.iter().any(|(n, _)| *n == name) {
                name = format!("{base}-{suffix}").trim_start_matches('-').to_string();
                suffix += 1;
            }
            named.push((name, path.clone()));
        }
        named
    }

    /// The check that a node serves: the definition's `health` commands (`crate::health`);
    /// for a definition without any, the weaker check that its client ports listen.
    pub(crate) fn health_script(&self) -> Option<String> {
        crate::health::shell_check(self.def).or_else(|| self.listening_script())
    }

    /// A POSIX sh script that succeeds when every client TCP port is listening (the kernel
    /// then completes a client's connection), read from /proc so that it needs no tool in the
    /// image; `None` when the cluster has no client TCP port. Listening is not serving (a
    /// ZooKeeper without quorum listens): this keeps a live node from being restarted.
    pub(crate) fn listening_script(&self) -> Option<String> {
        let ports: Vec<String> =
            self.client_ports().iter().filter(|p| p.protocol == "tcp").map(|p| format!("{:04X}", p.number)).collect();
        if ports.is_empty() {
            return None;
        }
        let script = format!(
            "for p in {}; do found=; for f in /proc/net/tcp /proc/net/tcp6; do [ -r \"$f\" ] || continue; \
             while read -r _ local _ state _; do case \"$local $state\" in *:\"$p 0A\") found=1; break ;; esac; \
             done <\"$f\"; [ -n \"$found\" ] && break; done; [ -n \"$found\" ] || exit 1; done",
            ports.join(" ")
        );
        Some(script)
    }
}

/// `text` as a DNS label of at most `max` characters: lowercase letters, digits and single `-`.
pub(crate) fn dns_label(text: &str, max: usize) -> String {
    let mut label = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    label.truncate(max);
    label.trim_end_matches('-').to_string()
}

/// Writes the output directory `dir` holding the one file `name`: whole or not at all, and only
/// over a directory imgbuild wrote (like every output: a user's directory is refused untouched).
pub(crate) fn write_output(dir: &Path, name: &str, text: &str) -> Result<std::path::PathBuf> {
    use crate::output::{Destination, Force, Shape, TempPath};
    let dest = Destination::check(dir, Shape::Directory, Force::NotOffered)?;
    let temp = TempPath::beside(dir)?;
    std::fs::create_dir(temp.path()).at(temp.path())?;
    let file = temp.path().join(name);
    crate::atomic_file::write(&file, text.as_bytes(), crate::atomic_file::Options::REPLACE.mode(0o644))?;
    Destination::record(temp.path())?;
    dest.replace_with(temp)?;
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::dns_label;

    proptest! {
        #[test]
        fn labels_are_dns_labels(text in any::<String>(), max in 1usize..63) {
            let label = dns_label(&text, max);
            prop_assert!(label.len() <= max);
            prop_assert!(label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            prop_assert!(!label.starts_with('-') && !label.ends_with('-') && !label.contains("--"));
        }
    }
}

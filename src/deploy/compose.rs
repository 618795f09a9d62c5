//! `compose.yaml`: one service per node on one host. Each service is named and reached as
//! `LABEL-ID`, told its id and its peers' names, listens on every address of its own network
//! namespace, keeps each volume of the image in a named volume, and publishes the client ports
//! on host ports that do not clash (on one host address when asked).
//!
//! Containers, volumes and the network carry explicit names (`container_name`, a volume's and
//! the default network's `name`), which podman-compose 1.0, docker-compose 1.29 and Docker
//! Compose v2 all use as written: the names do not depend on the tool or its project name. (A
//! top-level `name:` would fix the project's name too, but docker-compose 1.29 refuses it.)

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{json, Map, Value};

use super::{Cluster, Port, STOP_GRACE_SECONDS};
use crate::error::{Error, Result};
use crate::image_def::Node;
use crate::yaml;

/// Where a service's image comes from.
pub(crate) enum ImageSource {
    /// `imgbuild load`: each node's image ID in the engine (the config's digest, which Podman and
    /// Docker both give an image they load), so a new build changes the file and `up` recreates
    /// exactly the nodes whose image changed.
    Loaded(Vec<(u32, String)>),
    /// A registry the nodes were pushed to: `REPO@DIGEST` of each node's image.
    Registry(Vec<(u32, String)>),
}

pub(crate) struct ComposeOptions {
    pub images: ImageSource,
    /// Added to every published host port (node 0's client port P is published as P + offset).
    pub port_offset: u16,
    /// The host address the ports are published on; every address of the host when `None`.
    pub publish_address: Option<IpAddr>,
}

/// One published port of one node: the container's port on a host port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Published {
    pub node: u32,
    pub host_port: u16,
    pub port: Port,
}

/// The host ports: node i's client port P goes to the first free port from P + offset + i,
/// so that no two nodes (and no two ports of one node) share one.
pub(crate) fn publish(cluster: &Cluster, offset: u16) -> Result<Vec<Published>> {
    let mut used: BTreeSet<(u16, String)> = BTreeSet::new();
    let mut published = Vec::new();
    for (i, node) in cluster.running.iter().enumerate() {
        for port in cluster.client_ports() {
            let start = u32::from(port.number) + u32::from(offset) + i as u32;
            let free = (start..=65535).map(|h| h as u16).find(|h| !used.contains(&(*h, port.protocol.clone())));
            let host_port = free.ok_or_else(|| {
                Error::Usage(format!(
                    "no free host port from {start} for port {} of node {}: choose a smaller --port-offset",
                    port.number, node.id
                ))
            })?;
            used.insert((host_port, port.protocol.clone()));
            published.push(Published { node: node.id, host_port, port });
        }
    }
    Ok(published)
}

/// The service (and host) name of a node.
pub(crate) fn service_name(cluster: &Cluster, node: &Node) -> String {
    format!("{}-{}", cluster.label(), node.id)
}

/// The compose file, and the ports it publishes.
pub(crate) fn compose_file(cluster: &Cluster, options: &ComposeOptions) -> Result<(String, Vec<Published>)> {
    let published = publish(cluster, options.port_offset)?;
    let peers = cluster.peers(|_, n| service_name(cluster, n));
    let mut services = Map::new();
    let mut volumes = Map::new();
    for node in cluster.running {
        let name = service_name(cluster, node);
        let mut env = Map::new();
        env.insert("NODE_ID".into(), json!(node.id.to_string()));
        env.insert("PEERS".into(), json!(peers));
        if cluster.binds_by_variable() {
            env.insert(format!("IMGBUILD_VAR_{}", super::BIND_VAR), json!("0.0.0.0"));
        }
        for (k, v) in &cluster.def.deploy.env {
            env.insert(k.clone(), json!(v));
        }
        let mut mounts = Vec::new();
        for (volume, path) in cluster.volumes() {
            let key = format!("{name}-{volume}");
            mounts.push(json!(format!("{key}:{path}")));
            volumes.insert(key.clone(), json!({ "name": key }));
        }
        let ports: Vec<Value> = published
            .iter()
            .filter(|p| p.node == node.id)
            .map(|p| json!(port_mapping(p, options.publish_address)))
            .collect();
        let mut service = json!({
            "image": image_of(node, &options.images)?,
            "container_name": name,
            "hostname": name,
            "environment": env,
            "restart": "unless-stopped",
            "stop_signal": cluster.def.config.stop_signal.as_deref().unwrap_or("SIGTERM"),
            "stop_grace_period": format!("{STOP_GRACE_SECONDS}s"),
        });
        if !mounts.is_empty() {
            service["volumes"] = Value::Array(mounts);
        }
        if !ports.is_empty() {
            service["ports"] = Value::Array(ports);
        }
        if let Some(script) = cluster.health_script() {
            // CMD-SHELL: the one form podman-compose 1.0 and Docker Compose pass on alike. The
            // definition's checks may start a JVM: 30 s each.
            let test = ["CMD-SHELL".to_string(), script];
            service["healthcheck"] =
                json!({ "test": test, "interval": "15s", "timeout": "30s", "retries": 3, "start_period": "120s" });
        }
        services.insert(name, service);
    }
    let mut doc = json!({ "services": services, "networks": { "default": { "name": cluster.label() } } });
    if !volumes.is_empty() {
        doc["volumes"] = Value::Object(volumes);
    }
    let header = format!(
        "# Written by `imgbuild deploy compose` for cluster {0}: one service per node.\n# Run: podman-compose up -d (or docker compose up -d)\n# Stop: podman-compose down -t 60 (podman-compose 1.0 then leaves the network: podman network rm {0})\n",
        cluster.label()
    );
    let header = format!("{header}{}", loaded_names(cluster, &options.images));
    Ok((format!("{header}{}", yaml::document(&escape_interpolation(doc))), published))
}

/// A `ports` entry: `[ADDRESS:]HOST_PORT:PORT/PROTOCOL`, an IPv6 address in brackets.
fn port_mapping(p: &Published, address: Option<IpAddr>) -> String {
    let on = match address {
        None => String::new(),
        Some(IpAddr::V4(a)) => format!("{a}:"),
        Some(IpAddr::V6(a)) => format!("[{a}]:"),
    };
    format!("{on}{}:{}/{}", p.host_port, p.port.number, p.port.protocol)
}

fn image_of(node: &Node, images: &ImageSource) -> Result<String> {
    let (ImageSource::Loaded(refs) | ImageSource::Registry(refs)) = images;
    refs.iter()
        .find(|(id, _)| *id == node.id)
        .map(|(_, r)| r.clone())
        .ok_or_else(|| Error::Internal(format!("no image was built for node {}", node.id)))
}

/// The header line that names each node's loaded image by tag beside its ID in the file.
fn loaded_names(cluster: &Cluster, images: &ImageSource) -> String {
    let ImageSource::Loaded(refs) = images else { return String::new() };
    refs.iter()
        .map(|(id, image)| format!("# node {id}: image {image} (localhost/{}:node-{id})\n", cluster.def.name))
        .collect()
}

/// Compose replaces `$NAME` in every value; `$$` stands for a `$`.
fn escape_interpolation(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace('$', "$$")),
        Value::Array(a) => Value::Array(a.into_iter().map(escape_interpolation).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, escape_interpolation(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::image_def::ImageDef;

    fn seed() -> ImageDef {
        crate::project::Project::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), None).unwrap().image
    }

    #[test]
    fn the_seeds_peer_ports_are_not_published() {
        let def = seed();
        let cluster = Cluster::new(&def, None).unwrap();
        let ports: Vec<u16> = cluster.client_ports().iter().map(|p| p.number).collect();
        assert_eq!(ports, [2181, 9092]);
    }

    proptest! {
        #[test]
        fn published_ports_never_clash(
            ports in prop::collection::btree_set((1u16..=65535, prop::sample::select(vec!["tcp", "udp"])), 0..6),
            nodes in 1u32..8,
            offset in prop::sample::select(vec![0u16, 1, 1000, 60000]),
        ) {
            let mut def = seed();
            def.config.ports = ports.iter().map(|(n, p)| format!("{n}/{p}")).collect();
            def.lists.clear();
            def.nodes = (0..nodes).map(|id| Node { id, host: format!("h{id}") }).collect();
            let cluster = Cluster::new(&def, None).unwrap();
            match publish(&cluster, offset) {
                Ok(published) => {
                    prop_assert_eq!(published.len(), ports.len() * nodes as usize);
                    let distinct: BTreeSet<(u16, &str)> =
                        published.iter().map(|p| (p.host_port, p.port.protocol.as_str())).collect();
                    prop_assert_eq!(distinct.len(), published.len());
                    for p in &published {
                        prop_assert!(u32::from(p.host_port) >= u32::from(p.port.number) + u32::from(offset));
                    }
                }
                // Refused only when some port really runs out of room below 65536.
                Err(e) => prop_assert!(
                    ports.iter().any(|(n, _)| u32::from(*n) + u32::from(offset) + nodes * 6 > 65535),
                    "{}", e
                ),
            }
        }
    }
}

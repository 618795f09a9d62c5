//! How a cluster's VMs are addressed: the MACs and the forwarded address every template and
//! the guest's network configuration agree on (a leaf of `vm`, so neither imports the other).

use std::net::Ipv4Addr;

use crate::digest::Sha256Digest;
use crate::image_def::ImageDef;

/// The address qemu's user network forwards the host's ports to (its default guest address),
/// and its prefix; libvirt's passt interface is given the same.
pub(crate) const FORWARD_ADDRESS: &str = "10.0.2.15/24";

/// A locally administered MAC, derived from the cluster and the node id.
pub(crate) fn mac(cluster: &str, id: u32) -> String {
    let h = Sha256Digest::of(format!("{cluster}/{id}").as_bytes()).hex();
    format!("52:54:00:{}:{}:{}", &h[0..2], &h[2..4], &h[4..6])
}

/// The MAC of node `id`'s second interface, the one the host's forwarded ports reach.
pub(crate) fn forward_mac(cluster: &str, id: u32) -> String {
    mac(&format!("{cluster}/forward"), id)
}

/// Why the cluster's hosts cannot be the VMs' addresses on one network, if they cannot.
pub(crate) fn network_problem(def: &ImageDef) -> Option<&'static str> {
    let ips: Vec<Option<Ipv4Addr>> = def.nodes.iter().map(|n| n.host.parse().ok()).collect();
    let first = ips.first().copied().flatten();
    let same_net =
        |ip: &Option<Ipv4Addr>| matches!((ip, first), (Some(a), Some(b)) if a.octets()[..3] == b.octets()[..3]);
    match first {
        _ if ips.iter().any(Option::is_none) => Some("some of the cluster's hosts are names, not IPv4 addresses"),
        Some(ip) if ip.is_loopback() => {
            Some("the cluster's hosts are loopback addresses, which no VM network hands out")
        }
        _ if !ips.iter().all(same_net) => Some("the cluster's hosts are not in one /24 network"),
        _ => None,
    }
}

//! Kubernetes manifests: a StatefulSet whose pod ordinal i is the definition's i-th node
//! (`IMGBUILD_HOSTNAME_ORDINAL=index`: the entrypoint reads the ordinal from the pod's hostname
//! `LABEL-i`, whatever the node's id), a headless Service that gives each pod its DNS name
//! (the nodes' addresses in `PEERS`), a Service for clients, and a PodDisruptionBudget that lets
//! one node at a time go.
//!
//! Fit for a cluster of many machines: pods prefer different machines (and zones), each asks for
//! the definition's `[deploy]` resources, runs with no capability and no privilege escalation,
//! and is Ready only while its services serve (the definition's `health`). The StatefulSet's
//! RollingUpdate replaces the highest ordinal first and waits, before the next pod, until the
//! replaced one is Ready again: serving, in the quorum. It does not put the leader last (that is
//! `imgbuild rollout`'s job); at most one extra election per leader it restarts.

use serde_json::{json, Value};

use super::{Cluster, Port, STOP_GRACE_SECONDS};
use crate::error::{Error, Result};
use crate::yaml;

pub(crate) struct KubernetesOptions {
    /// The cluster image, by digest: `REGISTRY/REPO@sha256:…`.
    pub image: String,
    pub namespace: String,
    /// The cluster's DNS domain (`cluster.local`).
    pub domain: String,
}

/// Checks that `name` is a DNS label (namespace) or a DNS name (domain), as Kubernetes wants.
pub(crate) fn check_dns(what: &str, name: &str, labels: bool) -> Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = if labels { name.len() <= 253 && name.split('.').all(label_ok) } else { label_ok(name) };
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{what} `{}` is not a DNS {} (lowercase letters, digits and `-`{})",
            crate::error::escape(name),
            if labels { "name" } else { "label" },
            if labels { ", labels joined by `.`" } else { ", at most 63" }
        )))
    }
}

/// The DNS name of the pod with ordinal `i`.
pub(crate) fn pod_host(cluster: &Cluster, options: &KubernetesOptions, i: usize) -> String {
    let label = cluster.label();
    format!("{label}-{i}.{label}.{}.svc.{}", options.namespace, options.domain)
}

/// The manifests, one YAML stream.
pub(crate) fn manifests(cluster: &Cluster, options: &KubernetesOptions) -> Result<String> {
    check_dns("--namespace", &options.namespace, false)?;
    check_dns("--cluster-domain", &options.domain, true)?;
    let label = cluster.label();
    let labels = json!({ "app.kubernetes.io/name": label, "app.kubernetes.io/managed-by": "imgbuild" });
    let selector = json!({ "app.kubernetes.io/name": label });
    let metadata = |name: &str| json!({ "name": name, "namespace": options.namespace, "labels": labels });

    let mut docs = Vec::new();
    // Peers find each other before they are ready: the quorum forms only once they do.
    let mut peers = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&label),
        "spec": { "clusterIP": "None", "publishNotReadyAddresses": true, "selector": selector },
    });
    let all_ports = cluster.ports();
    if !all_ports.is_empty() {
        peers["spec"]["ports"] = service_ports(&all_ports);
    }
    docs.push(peers);
    let client_ports = cluster.client_ports();
    if !client_ports.is_empty() {
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(&format!("{label}-client")),
            "spec": { "type": "ClusterIP", "selector": selector, "ports": service_ports(&client_ports) },
        }));
    }
    docs.push(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(&label),
        "spec": { "maxUnavailable": 1, "selector": { "matchLabels": selector } },
    }));
    docs.push(stateful_set(cluster, options, metadata(&label), &labels, &selector));
    Ok(format!(
        "# Written by `imgbuild deploy kubernetes` for cluster {label}: kubectl apply -f THIS_FILE\n{}",
        yaml::documents(&docs)
    ))
}

fn service_ports(ports: &[Port]) -> Value {
    ports
        .iter()
        .map(|p| {
            json!({ "name": p.name(), "port": p.number, "targetPort": p.number, "protocol": p.protocol.to_uppercase() })
        })
        .collect()
}

fn stateful_set(
    cluster: &Cluster,
    options: &KubernetesOptions,
    metadata: Value,
    labels: &Value,
    selector: &Value,
) -> Value {
    let label = cluster.label();
    let peers = cluster.peers(|i, _| pod_host(cluster, options, i));
    let mut env = vec![
        json!({ "name": "IMGBUILD_HOSTNAME_ORDINAL", "value": "index" }),
        json!({ "name": "PEERS", "value": peers }),
    ];
    if cluster.binds_by_variable() {
        env.push(json!({ "name": format!("IMGBUILD_VAR_{}", super::BIND_VAR), "value": "0.0.0.0" }));
    }
    let deploy = &cluster.def.deploy;
    env.extend(deploy.env.iter().map(|(k, v)| json!({ "name": k, "value": v })));
    let volumes = cluster.volumes();
    let mut container = json!({
        "name": "node",
        "image": options.image,
        "env": env,
        "resources": {
            "requests": { "cpu": deploy.cpu, "memory": deploy.memory },
            "limits": { "memory": deploy.memory },
        },
        "securityContext": security_context(&cluster.def.config.user),
    });
    let ports: Vec<Value> = cluster
        .ports()
        .iter()
        .map(|p| json!({ "name": p.name(), "containerPort": p.number, "protocol": p.protocol.to_uppercase() }))
        .collect();
    if !ports.is_empty() {
        container["ports"] = Value::Array(ports);
    }
    if !volumes.is_empty() {
        container["volumeMounts"] =
            volumes.iter().map(|(name, path)| json!({ "name": name, "mountPath": path })).collect();
    }
    add_probes(cluster, &mut container);
    let mut spec = json!({
        "serviceName": label,
        "replicas": cluster.running.len(),
        "podManagementPolicy": "Parallel",
        // One pod at a time, the next only once the previous is Ready (serving) for 10 s.
        "updateStrategy": { "type": "RollingUpdate", "rollingUpdate": { "partition": 0 } },
        "minReadySeconds": 10,
        "selector": { "matchLabels": selector },
        "template": {
            "metadata": { "labels": labels },
            "spec": {
                "terminationGracePeriodSeconds": STOP_GRACE_SECONDS,
                "enableServiceLinks": false,
                "securityContext": { "seccompProfile": { "type": "RuntimeDefault" } },
                "affinity": anti_affinity(selector),
                "topologySpreadConstraints": [{
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": { "matchLabels": selector },
                }],
                "containers": [container],
            },
        },
    });
    if !volumes.is_empty() {
        spec["volumeClaimTemplates"] = volumes
            .iter()
            .map(|(name, _)| {
                json!({
                    "metadata": { "name": name },
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": { "requests": { "storage": deploy.storage } },
                    },
                })
            })
            .collect();
    }
    json!({ "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata, "spec": spec })
}

/// The probes: Ready only while every service serves (the definition's `health`: a ZooKeeper
/// without quorum listens but is not Ready, so a rolling update waits for it); restarted only
/// when its client ports stop listening (restarting nodes that lost their quorum would not bring
/// it back). Serving checks start a JVM: they get 30 s.
fn add_probes(cluster: &Cluster, container: &mut Value) {
    let probe = |script: &str, period: u32, failures: u32, timeout: u32| {
        json!({
            "exec": { "command": ["/bin/sh", "-c", script] },
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": timeout,
        })
    };
    let listening = cluster.listening_script();
    if let Some(script) = &listening {
        // Starting a JVM may take minutes on a loaded machine.
        container["startupProbe"] = probe(script, 10, 30, 5);
        container["livenessProbe"] = probe(script, 10, 6, 5);
    }
    if let Some(script) = cluster.health_script() {
        container["readinessProbe"] = probe(&script, 10, 3, 30);
    }
}

/// No capability, no privilege escalation; `runAsNonRoot` only when the image's user is not
/// root (the seed's services run as root in their container, owning their volumes).
fn security_context(user: &str) -> Value {
    let mut context = json!({
        "allowPrivilegeEscalation": false,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    });
    if !runs_as_root(user) {
        context["runAsNonRoot"] = json!(true);
    }
    context
}

/// Whether an OCI `user` (`UID[:GID]`, `NAME[:GROUP]`, empty) is root; a name other than `root`
/// counts as not root only when it is numeric (a name Kubernetes cannot check is taken as root).
pub(crate) fn runs_as_root(user: &str) -> bool {
    let who = user.split(':').next().unwrap_or("");
    match who.parse::<u32>() {
        Ok(uid) => uid == 0,
        Err(_) => true,
    }
}

/// Pods prefer machines (by host name) that run no other pod of the cluster.
fn anti_affinity(selector: &Value) -> Value {
    json!({
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": { "matchLabels": selector },
                },
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::runs_as_root;

    #[test]
    fn root_is_uid_zero_or_any_name() {
        for root in ["", "0", "0:0", "root", "root:root", "kafka"] {
            assert!(runs_as_root(root), "{root}");
        }
        for user in ["1000", "1000:1000", "65534:0"] {
            assert!(!runs_as_root(user), "{user}");
        }
    }
}

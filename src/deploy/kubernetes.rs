//! Kubernetes manifests: a StatefulSet whose pod ordinal i is the definition's i-th node
//! (`IMGBUILD_HOSTNAME_ORDINAL=index`: the entrypoint reads the ordinal from the pod's hostname
//! `LABEL-i`, whatever the node's id), a headless Service that gives each pod its DNS name
//! (the nodes' addresses in `PEERS`), a Service for clients, and a PodDisruptionBudget that lets
//! one node at a time go.

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

/// Requests of each pod: what a ZooKeeper and a broker need to start and stay up.
const CPU_REQUEST: &str = "500m";
const MEMORY_REQUEST: &str = "1Gi";
const STORAGE_REQUEST: &str = "10Gi";

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
    let volumes = cluster.volumes();
    let mut container = json!({
        "name": "node",
        "image": options.image,
        "env": env,
        "resources": { "requests": { "cpu": CPU_REQUEST, "memory": MEMORY_REQUEST } },
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
    if let Some(script) = cluster.health_script() {
        let exec = json!({ "command": ["/bin/sh", "-c", script] });
        // Starting (a JVM, then an election) may take minutes; after that a node that stops
        // listening is restarted, and one that is not listening gets no client traffic.
        container["startupProbe"] = json!({ "exec": exec, "periodSeconds": 10, "failureThreshold": 30 });
        container["livenessProbe"] = json!({ "exec": exec, "periodSeconds": 10, "failureThreshold": 6 });
        container["readinessProbe"] = json!({ "exec": exec, "periodSeconds": 5, "failureThreshold": 3 });
    }
    let mut spec = json!({
        "serviceName": label,
        "replicas": cluster.running.len(),
        "podManagementPolicy": "Parallel",
        "updateStrategy": { "type": "RollingUpdate" },
        "selector": { "matchLabels": selector },
        "template": {
            "metadata": { "labels": labels },
            "spec": {
                "terminationGracePeriodSeconds": STOP_GRACE_SECONDS,
                "enableServiceLinks": false,
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
                        "resources": { "requests": { "storage": STORAGE_REQUEST } },
                    },
                })
            })
            .collect();
    }
    json!({ "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata, "spec": spec })
}

//! `imgbuild deploy compose` and `imgbuild deploy kubernetes`: a deployment of the cluster
//! written from its definition.

use std::path::PathBuf;

use crate::build::{build, BuildResult};
use crate::deploy::compose::{self, ComposeOptions, ImageSource};
use crate::deploy::kubernetes::{self, KubernetesOptions};
use crate::deploy::{write_output, Cluster};
use crate::error::{Error, Result};
use crate::project::Project;
use crate::registry::Reference;

use super::build::ImageChoice;
use super::GlobalArgs;

#[derive(clap::Subcommand)]
pub enum DeployCommand {
    /// A Compose file: one service per node on this host (podman-compose, docker compose)
    Compose(ComposeArgs),
    /// Kubernetes manifests: a StatefulSet whose pod ordinal is the node, and its Services
    Kubernetes(KubernetesArgs),
}

#[derive(clap::Args)]
pub struct CommonArgs {
    /// Output directory [default: out/IMAGE-compose or out/IMAGE-kubernetes]
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// How many nodes run (the definition's first N); other than all of them only when the
    /// definition is `scalable` [default: every node]
    #[arg(long, value_name = "N")]
    pub replicas: Option<usize>,
    #[command(flatten)]
    pub choice: ImageChoice,
}

#[derive(clap::Args)]
pub struct ComposeArgs {
    /// The registry repository the nodes were pushed to (`imgbuild push --all REPO`); images are
    /// then pinned by digest [default: each node's image ID, as `imgbuild load` loads it]
    #[arg(long, value_name = "REPO")]
    pub repo: Option<String>,
    /// Added to every published host port (node 0's port 2181 is published as 2181 + N)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub port_offset: u16,
    /// Publish the ports on this host address only, such as 127.0.0.1 (loopback: reachable from
    /// this host alone) [default: every address of the host]
    #[arg(long, value_name = "ADDR")]
    pub publish_address: Option<std::net::IpAddr>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(clap::Args)]
pub struct KubernetesArgs {
    /// The registry repository the images were pushed to (`imgbuild push --all REPO`); every
    /// pod runs its `cluster` image, pinned by digest
    #[arg(long, value_name = "REPO")]
    pub repo: String,
    /// The namespace the cluster runs in (part of each node's DNS name)
    #[arg(long, value_name = "NS", default_value = "default")]
    pub namespace: String,
    /// The Kubernetes cluster's DNS domain
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub(super) fn run(global: &GlobalArgs, cmd: &DeployCommand) -> Result<()> {
    match cmd {
        DeployCommand::Compose(args) => run_compose(global, args),
        DeployCommand::Kubernetes(args) => run_kubernetes(global, args),
    }
}

/// `REPO` as a repository: a tag or digest in it would be ignored, so it is refused.
fn repository(text: &str) -> Result<Reference> {
    let r: Reference = text.parse().map_err(Error::Usage)?;
    if r.tag.is_some() || r.digest.is_some() {
        return Err(Error::Usage(format!(
            "--repo `{text}`: give the repository without a tag or digest; the images are pinned by digest"
        )));
    }
    Ok(r)
}

/// Builds (from the store, as `push` does) to know the digests the registry holds.
fn built(global: &GlobalArgs, project: &Project, choice: &ImageChoice) -> Result<BuildResult> {
    let settings = super::build::settings(global, choice)?;
    let store = global.open_store()?;
    let _building = store.build_lock_shared()?;
    let reporter = global.reporter();
    build(&store, &project.image, &[], &settings, reporter.as_ref())
}

fn out_dir(args: &CommonArgs, project: &Project, kind: &str) -> Result<PathBuf> {
    match &args.out {
        Some(out) => Ok(out.clone()),
        None => crate::tree_path::default_out(&format!("{}-{kind}", project.image.name)),
    }
}

fn run_compose(global: &GlobalArgs, args: &ComposeArgs) -> Result<()> {
    let project = Project::load(&global.project, args.common.choice.image.as_deref())?;
    let cluster = Cluster::new(&project.image, args.common.replicas)?;
    let out = out_dir(&args.common, &project, "compose")?;
    let result = built(global, &project, &args.common.choice)?;
    let images = match &args.repo {
        // The image ID `imgbuild load` gives each node (its config's digest).
        None => ImageSource::Loaded(
            result
                .nodes
                .iter()
                .filter_map(|n| Some((n.node.id, n.image.platforms.first()?.config_digest.hex().to_string())))
                .collect(),
        ),
        Some(text) => {
            let repo = repository(text)?;
            ImageSource::Registry(
                result.nodes.iter().map(|n| (n.node.id, format!("{}@{}", repo.name(), n.image.digest))).collect(),
            )
        }
    };
    let options = ComposeOptions { images, port_offset: args.port_offset, publish_address: args.publish_address };
    let (text, published) = compose::compose_file(&cluster, &options)?;
    let path = write_output(&out, "compose.yaml", &text)?;
    let address = args.publish_address.map(|a| a.to_string());
    // The file is written either way (it may run on another host); this one is told what it lacks.
    let lacking = host_lacks(global);
    if global.json {
        let ports: Vec<serde_json::Value> = published
            .iter()
            .map(|p| serde_json::json!({ "node": p.node, "host_address": address, "host_port": p.host_port, "port": p.port.number, "protocol": p.port.protocol }))
            .collect();
        super::print_json(
            &serde_json::json!({ "file": path, "services": cluster.running.len(), "published": ports, "host_lacks": lacking }),
        )?;
    } else {
        outln!("{}", path.display())?;
        if !lacking.is_empty() {
            errln!(
                "warning: this host cannot run it yet: it lacks {} (`imgbuild doctor compose` says more)",
                lacking.join("; ")
            );
        }
        if !global.quiet {
            let on = address.as_deref().unwrap_or("every address");
            for p in &published {
                errln!(
                    "  node {}: port {}/{} on host port {} ({on})",
                    p.node,
                    p.port.number,
                    p.port.protocol,
                    p.host_port
                );
            }
        }
    }
    Ok(())
}

/// What running a compose file needs that this host does not have (`imgbuild doctor compose`).
fn host_lacks(global: &GlobalArgs) -> Vec<String> {
    let report = crate::host::check(&[crate::host::Feature::Compose], &super::doctor::context(global, false));
    report.features.into_iter().flat_map(|f| f.missing).collect()
}

fn run_kubernetes(global: &GlobalArgs, args: &KubernetesArgs) -> Result<()> {
    let project = Project::load(&global.project, args.common.choice.image.as_deref())?;
    let cluster = Cluster::new(&project.image, args.common.replicas)?;
    let repo = repository(&args.repo)?;
    kubernetes::check_dns("--namespace", &args.namespace, false)?;
    kubernetes::check_dns("--cluster-domain", &args.cluster_domain, true)?;
    // Before the build, which can take minutes: a link on the way to the output is refused.
    let out = out_dir(&args.common, &project, "kubernetes")?;
    let result = built(global, &project, &args.common.choice)?;
    let options = KubernetesOptions {
        image: format!("{}@{}", repo.name(), result.cluster.digest),
        namespace: args.namespace.clone(),
        domain: args.cluster_domain.clone(),
    };
    let text = kubernetes::manifests(&cluster, &options)?;
    let name = format!("{}.yaml", cluster.label());
    let path = write_output(&out, &name, &text)?;
    if global.json {
        super::print_json(
            &serde_json::json!({ "file": path, "image": options.image, "replicas": cluster.running.len() }),
        )?;
    } else {
        outln!("{}", path.display())?;
    }
    Ok(())
}

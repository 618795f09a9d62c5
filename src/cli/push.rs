//! `imgbuild push` and `imgbuild pull`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use crate::build::build;
use crate::error::{Error, Result};
use crate::platform::Platform;
use crate::project::Project;
use crate::registry::auth::{self, Credentials, Secret};
use crate::registry::{pull, push, Client, Reference, RegistrySettings};

use super::build::ImageChoice;
use super::GlobalArgs;

#[derive(clap::Args)]
pub struct RegistryArgs {
    /// Registry user name (the password is read from standard input with --password-stdin,
    /// or from IMGBUILD_REGISTRY_PASSWORD)
    #[arg(long, env = "IMGBUILD_REGISTRY_USERNAME", value_name = "USER")]
    pub username: Option<String>,
    /// Read the registry password from standard input
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Extra CA certificates (PEM) to trust, besides the system's
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Use plain HTTP (allowed only for registries on loopback)
    #[arg(long)]
    pub insecure: bool,
    /// Blobs larger than this many bytes are uploaded in chunks of this size
    #[arg(long, env = "IMGBUILD_CHUNK_SIZE", value_name = "BYTES", default_value_t = 64 << 20)]
    pub chunk_size: u64,
}

impl RegistryArgs {
    fn credentials(&self, reference: &Reference) -> Result<Option<Credentials>> {
        if let Some(username) = &self.username {
            let password = if self.password_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| Error::Usage(format!("reading the password from stdin: {e}")))?;
                text.trim_end_matches(['\n', '\r']).to_string()
            } else {
                std::env::var("IMGBUILD_REGISTRY_PASSWORD").map_err(|_| {
                    Error::Usage(
                        "--username needs a password: pass --password-stdin or set IMGBUILD_REGISTRY_PASSWORD".into(),
                    )
                })?
            };
            return Ok(Some(Credentials { username: username.clone(), password: Secret::new(password) }));
        }
        auth::from_docker_config(&reference.registry)
    }

    pub fn connect(&self, global: &GlobalArgs, reference: &Reference) -> Result<Client> {
        if self.chunk_size == 0 {
            return Err(Error::Usage("--chunk-size must be at least 1".into()));
        }
        let settings = RegistrySettings {
            credentials: self.credentials(reference)?,
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
            timeout: Duration::from_secs(global.timeout),
            chunk_size: self.chunk_size,
            attempts: 5,
        };
        Client::connect(reference, &settings)
    }
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// Where to: REGISTRY/REPO[:TAG]; with --all, REGISTRY/REPO (each node is tagged node-N,
    /// the node-less image `cluster`)
    pub reference: String,
    /// Build and push this node's image (tagged node-N unless the reference has a tag)
    #[arg(long, conflicts_with_all = ["all", "from"])]
    pub id: Option<u32>,
    /// Build and push every node of the cluster, and the node-less `cluster` image
    #[arg(long, conflicts_with = "from")]
    pub all: bool,
    /// Push an existing OCI layout directory or oci-archive instead of building
    #[arg(long, value_name = "PATH")]
    pub from: Option<PathBuf>,
    /// With --from: which tag of the layout [default: the only one]
    #[arg(long, value_name = "TAG", requires = "from")]
    pub from_tag: Option<String>,
    #[command(flatten)]
    pub choice: ImageChoice,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn parse_reference(text: &str) -> Result<Reference> {
    text.parse().map_err(Error::Usage)
}

pub fn run_push(global: &GlobalArgs, args: &PushArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    if reference.digest.is_some() {
        return Err(Error::Usage("push to a tag (REPO:TAG), not a digest: the digest is what push prints".into()));
    }
    let store = global.open_store()?;
    let _building = store.build_lock_shared()?;
    let reporter = global.reporter();
    // What to push: (destination, manifest or index digest).
    let mut targets = Vec::new();
    if let Some(from) = &args.from {
        let imported = crate::import::import(&store, from)?;
        let top = match (&args.from_tag, imported.tops.as_slice()) {
            (Some(tag), tops) => tops.iter().find(|(t, _)| t.as_deref() == Some(tag.as_str())).map(|(_, d)| *d),
            (None, [(_, only)]) => Some(*only),
            (None, _) => None,
        };
        let tags: Vec<String> = imported.tops.iter().filter_map(|(t, _)| t.clone()).collect();
        let top = top.ok_or_else(|| {
            Error::Usage(format!("choose a tag of {} with --from-tag (it has: {})", from.display(), tags.join(", ")))
        })?;
        targets.push((reference.clone(), top));
    } else {
        if args.id.is_none() && !args.all {
            return Err(Error::Usage("say what to push: --id N, --all, or --from PATH".into()));
        }
        if args.all && reference.tag.is_some() {
            return Err(Error::Usage("with --all, give a repository without a tag: each node is tagged node-N".into()));
        }
        let settings = super::build::settings(global, &args.choice)?;
        let project = Project::load(&global.project, args.choice.image.as_deref())?;
        let nodes: Vec<u32> = args.id.into_iter().collect();
        let result = build(&store, &project.image, &nodes, &settings, reporter.as_ref())?;
        for node in &result.nodes {
            let dest = if args.id.is_some() && reference.tag.is_some() {
                reference.clone()
            } else {
                reference.with_tag(&node.image.tag)
            };
            targets.push((dest, node.image.digest));
        }
        // Every node's layers and the `cluster` image, which `deploy kubernetes` runs in every pod.
        if args.all {
            targets.push((reference.with_tag(&result.cluster.tag), result.cluster.digest));
        }
    }
    let client = args.registry.connect(global, &reference)?;
    let mut pushed = Vec::new();
    for (dest, digest) in &targets {
        let result = push::push(&store, &client, dest, digest, reporter.as_ref())?;
        if !global.json {
            println!("{}", result.reference);
            if !global.quiet {
                let s = &result.stats;
                eprintln!(
                    "  {} blob(s) uploaded ({} bytes), {} already there, {} mounted",
                    s.blobs_uploaded, s.bytes_uploaded, s.blobs_skipped, s.blobs_mounted
                );
            }
        }
        pushed.push(result);
    }
    if global.json {
        let bytes: u64 = pushed.iter().map(|p| p.stats.bytes_uploaded).sum();
        super::print_json(&serde_json::json!({ "pushed": pushed, "bytes_uploaded": bytes }));
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// What to pull, pinned: REGISTRY/REPO@sha256:DIGEST (a tag is accepted, and its digest printed)
    pub reference: String,
    /// Platforms to pull from an index, comma-separated [default: all]
    #[arg(long, value_name = "LIST")]
    pub platform: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run_pull(global: &GlobalArgs, args: &PullArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    let platforms = args.platform.as_deref().map(Platform::parse_list).transpose().map_err(Error::Usage)?;
    let store = global.open_store()?;
    let _importing = store.build_lock_shared()?;
    let reporter = global.reporter();
    let client = args.registry.connect(global, &reference)?;
    let imported = pull::pull(&store, &client, &reference, platforms.as_deref(), reporter.as_ref())?;
    let recipes = super::store::project_recipes(global)?;
    let matched = super::store::matching_image_recipes(&recipes, &imported);
    if global.json {
        super::print_json(
            &serde_json::json!({ "reference": reference.to_string(), "imported": imported, "recipes": matched }),
        );
    } else {
        for (d, p) in &imported.manifests {
            println!("{}@{d}\t{}", reference.name(), p.as_deref().unwrap_or("-"));
        }
        if !global.quiet && reference.digest.is_none() {
            eprintln!("warning: {reference} is a tag, which can move; pin the digest above in a recipe");
        }
    }
    Ok(())
}

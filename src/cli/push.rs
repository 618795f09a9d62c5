//! `imgbuild push` and `imgbuild pull`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::build::build;
use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::project::Project;
use crate::registry::auth::{Credentials, Secret};
use crate::registry::{pull, push, Access, Client, Reference, RegistrySettings};
use crate::store::Store;

use super::build::ImageChoice;
use super::GlobalArgs;

#[derive(clap::Args)]
pub struct RegistryArgs {
    /// Registry user name (the password is read from standard input with --password-stdin,
    /// or from IMGBUILD_REGISTRY_PASSWORD); without it, podman's and Docker's credential
    /// files and helpers are read
    #[arg(long, env = "IMGBUILD_REGISTRY_USERNAME", value_name = "USER")]
    pub username: Option<String>,
    /// Read the registry password from standard input
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Use plain HTTP (allowed only for registries on loopback)
    #[arg(long)]
    pub insecure: bool,
    /// Blobs larger than this many bytes are uploaded in chunks of this size
    #[arg(long, env = "IMGBUILD_CHUNK_SIZE", value_name = "BYTES", default_value_t = 64 << 20)]
    pub chunk_size: u64,
}

impl RegistryArgs {
    /// The command line's credentials, if it gives any (they win over every file).
    fn credentials(&self) -> Result<Option<Credentials>> {
        let Some(username) = &self.username else { return Ok(None) };
        let (password, origin) = if self.password_stdin {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Error::Usage(format!("reading the password from stdin: {e}")))?;
            (text.trim_end_matches(['\n', '\r']).to_string(), "--password-stdin")
        } else {
            let password = std::env::var("IMGBUILD_REGISTRY_PASSWORD").map_err(|_| {
                Error::Usage(
                    "--username needs a password: pass --password-stdin or set IMGBUILD_REGISTRY_PASSWORD".into(),
                )
            })?;
            (password, "IMGBUILD_REGISTRY_PASSWORD")
        };
        Ok(Some(Credentials::new(username, Secret::new(password), origin)))
    }

    pub fn connect(&self, global: &GlobalArgs, reference: &Reference, access: Access) -> Result<Client> {
        if self.chunk_size == 0 {
            return Err(Error::Usage("--chunk-size must be at least 1".into()));
        }
        let settings = RegistrySettings {
            credentials: self.credentials()?,
            ca_files: global.ca_file.clone(),
            // The global `--insecure-registry HOST` means the same for this registry.
            insecure: self.insecure || global.insecure_registry.contains(&reference.registry),
            timeout: Duration::from_secs(global.timeout),
            chunk_size: self.chunk_size,
            attempts: 5,
            access,
            reach: Default::default(),
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

pub(super) fn run_push(global: &GlobalArgs, args: &PushArgs) -> Result<()> {
    if global.offline {
        return Err(Error::Usage("push sends images to a registry: it cannot run with --offline".into()));
    }
    if let Some(from) = &args.from {
        super::existing(Some("--from"), from, super::PathKind::Any)?;
    }
    let reference = parse_reference(&args.reference)?;
    if reference.digest.is_some() {
        return Err(Error::Usage("push to a tag (REPO:TAG), not a digest: the digest is what push prints".into()));
    }
    let store = global.open_store()?;
    let _building = store.build_lock_shared()?;
    let reporter = global.reporter();
    let targets = match &args.from {
        Some(from) => vec![layout_top(&store, &reference, from, args.from_tag.as_deref())?],
        None => built_targets(global, args, &store, &reference, reporter.as_ref())?,
    };
    let client = args.registry.connect(global, &reference, Access::Push)?;
    let mut pushed = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let result = push::push(&store, &client, &target.to, &target.digest, &target.referrers, reporter.as_ref())
            .map_err(|e| unfinished(e, &pushed, &targets[i..]))?;
        if !global.quiet && !global.json {
            let s = &result.stats;
            let retried = s.manifests_retried + result.referrers.manifests_retried;
            errln!(
                "{}: {} blob(s) uploaded ({} bytes), {} already there, {} mounted{}",
                result.reference,
                s.blobs_uploaded,
                s.bytes_uploaded,
                s.blobs_skipped,
                s.blobs_mounted,
                if retried > 0 { format!(", {retried} manifest(s) retried") } else { String::new() }
            );
        }
        pushed.push(result);
    }
    // Printed once every image is pushed: a reader that stops early cannot cut the pushes short.
    if global.json {
        let bytes: u64 = pushed.iter().map(|p| p.stats.bytes_uploaded + p.referrers.bytes_uploaded).sum();
        return super::print_json(&serde_json::json!({ "pushed": pushed, "bytes_uploaded": bytes }));
    }
    for result in &pushed {
        outln!("{}", result.reference)?;
    }
    Ok(())
}

/// A registry failure in the middle of a push (after its retries), saying what is pushed and
/// what is not, and that running the same push again finishes it.
fn unfinished(e: Error, done: &[push::Pushed], left: &[Target]) -> Error {
    let Error::Registry { registry, message, hint } = e else { return e };
    let done: Vec<&str> = done.iter().map(|p| p.reference.as_str()).collect();
    let left: Vec<String> = left.iter().map(|t| t.to.to_string()).collect();
    let state = format!(
        "pushed: {}; not pushed: {}. Run the same push again to finish it: what the registry holds \
         already is not uploaded again",
        if done.is_empty() { "nothing yet".to_string() } else { done.join(", ") },
        left.join(", ")
    );
    let hint = Some(match hint {
        Some(h) => format!("{h}\n{state}"),
        None => state,
    });
    Error::Registry { registry, message, hint }
}

/// An image to push: where to, its manifest or index, and the artifact manifests attached to it.
struct Target {
    to: Reference,
    digest: Sha256Digest,
    referrers: Vec<Sha256Digest>,
}

/// The manifest or index of an existing layout or archive (`--from`, `--from-tag`), with
/// the layout's referrers of it.
fn layout_top(store: &Store, to: &Reference, from: &Path, tag: Option<&str>) -> Result<Target> {
    let imported = crate::import::import(store, from)?;
    let tags: Vec<String> = imported.tops.iter().filter_map(|(t, _)| t.as_deref().map(crate::error::escape)).collect();
    let has = if tags.is_empty() { "it has no tags".to_string() } else { format!("its tags: {}", tags.join(", ")) };
    let shown = crate::error::escape(&from.display().to_string());
    let digest = match (tag, imported.tops.as_slice()) {
        (Some(tag), tops) => tops
            .iter()
            .find(|(t, _)| t.as_deref() == Some(tag))
            .map(|(_, d)| *d)
            .ok_or_else(|| Error::Usage(format!("{shown} has no tag `{}` ({has})", crate::error::escape(tag)))),
        (None, [(_, only)]) => Ok(*only),
        (None, tops) => {
            Err(Error::Usage(format!("{shown} holds {} images: choose one with --from-tag ({has})", tops.len())))
        }
    }?;
    let referrers = crate::supply::image_name::referrers_of(store, &digest, &imported.referrers)?;
    Ok(Target { to: to.clone(), digest, referrers })
}

/// Builds the nodes asked for and names where each goes: `--id N` (under the reference's tag
/// if it has one) or `--all` (each tagged node-N).
fn built_targets(
    global: &GlobalArgs,
    args: &PushArgs,
    store: &Store,
    reference: &Reference,
    reporter: &dyn Reporter,
) -> Result<Vec<Target>> {
    if args.id.is_none() && !args.all {
        return Err(Error::Usage("say what to push: --id N, --all, or --from PATH".into()));
    }
    if args.all && reference.tag.is_some() {
        return Err(Error::Usage("with --all, give a repository without a tag: each node is tagged node-N".into()));
    }
    let settings = super::build::settings(global, &args.choice)?;
    let project = Project::load(&global.project, args.choice.image.as_deref())?;
    let nodes: Vec<u32> = args.id.into_iter().collect();
    let result = build(store, &project.image, &nodes, &settings, reporter)?;
    let keep_tag = args.id.is_some() && reference.tag.is_some();
    let target = |to: Reference, image: &crate::image::StoredImage| Target {
        to,
        digest: image.digest,
        referrers: image.referrers.iter().map(|r| r.digest).collect(),
    };
    let mut targets: Vec<_> = result
        .nodes
        .iter()
        .map(|node| target(if keep_tag { reference.clone() } else { reference.with_tag(&node.image.tag) }, &node.image))
        .collect();
    // Every node's image and the `cluster` image, which `deploy kubernetes` runs in every pod.
    if args.all {
        targets.push(target(reference.with_tag(&result.cluster.tag), &result.cluster));
    }
    Ok(targets)
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

pub(super) fn run_pull(global: &GlobalArgs, args: &PullArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    let platforms = args.platform.as_deref().map(Platform::parse_list).transpose().map_err(Error::Usage)?;
    let store = global.open_store()?;
    let _importing = store.build_lock_shared()?;
    let imported = if global.offline {
        pull::from_store(&store, &reference, platforms.as_deref())?
    } else {
        let client = args.registry.connect(global, &reference, Access::Pull)?;
        pull::pull(&store, &client, &reference, platforms.as_deref(), global.reporter().as_ref())?
    };
    let recipes = super::store::project_recipes(global)?;
    let matched = super::store::matching_image_recipes(&recipes, &imported);
    if global.json {
        super::print_json(
            &serde_json::json!({ "reference": reference.to_string(), "imported": imported, "recipes": matched }),
        )?;
    } else {
        for (d, p) in &imported.manifests {
            outln!("{}@{d}\t{}", reference.name(), p.as_deref().unwrap_or("-"))?;
        }
        if !global.quiet && reference.digest.is_none() {
            errln!("warning: {reference} is a tag, which can move; pin the digest above in a recipe");
        }
    }
    Ok(())
}

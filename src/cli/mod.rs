//! The command line: parses and validates arguments into settings, then calls the pipeline.
//! Results go to stdout (text, or JSON with `--json`); everything for humans goes to stderr.

mod build;
mod check;
mod completions;
mod deploy;
mod init;
mod load;
mod prefetch;
mod push;
mod recipe;
mod sbom;
mod store;
mod verify;
mod vm;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::fetch::{FetchSettings, RegistryAccess};
use crate::progress::{HumanReporter, Reporter, SilentReporter};
use crate::registry::reference::RegistryMirror;

#[derive(Parser)]
#[command(
    name = "imgbuild",
    version,
    about = "Reproducible OCI images and VM disks for pinned clusters",
    max_term_width = 100,
    after_help = "Exit codes: 0 success, 1 bad input (recipe, definition, hash, tarball), 2 usage, 3 an input is\nunavailable, 4 store or output I/O, 5 registry, 6 an external tool is missing or failed, 7 verify: the\nimage is not what its provenance builds, 70 internal error. With --json, errors are also printed as JSON."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args)]
pub struct GlobalArgs {
    /// The store directory [default: $XDG_CACHE_HOME/imgbuild]
    #[arg(long, global = true, env = "IMGBUILD_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// The project directory holding recipes/ and images/
    #[arg(long, global = true, env = "IMGBUILD_PROJECT", value_name = "DIR", default_value = ".")]
    pub project: PathBuf,
    /// Print machine-readable JSON on stdout and no progress
    #[arg(long, global = true)]
    pub json: bool,
    /// Print no progress or status
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Never use the network: inputs come from the store or --mirror directories only
    #[arg(long, global = true, env = "IMGBUILD_OFFLINE")]
    pub offline: bool,
    /// A directory of upstream files, named as upstream, tried before any URL (repeatable)
    #[arg(long, global = true, env = "IMGBUILD_MIRROR", value_name = "DIR", value_delimiter = ':')]
    pub mirror: Vec<PathBuf>,
    /// Also look for the base images of registry HOST at MIRROR (host[:port][/path]), before
    /// HOST itself (repeatable; as registries.conf mirrors)
    #[arg(long, global = true, env = "IMGBUILD_REGISTRY_MIRROR", value_name = "HOST=MIRROR", value_delimiter = ',')]
    pub registry_mirror: Vec<RegistryMirror>,
    /// A registry repository shared as a layer cache (REGISTRY/REPO): a layer missing from the
    /// store is pulled from it (and checked), a layer built here is pushed to it
    #[arg(long, global = true, env = "IMGBUILD_CACHE", value_name = "REPO")]
    pub cache: Option<String>,
    /// Speak plain HTTP to this registry when fetching base images or using it as --cache
    /// (loopback only; repeatable)
    #[arg(long, global = true, env = "IMGBUILD_INSECURE_REGISTRY", value_name = "HOST[:PORT]", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// A PEM file of certificates to trust for registries, besides the system's and certs.d
    /// (repeatable)
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Vec<PathBuf>,
    /// Seconds to wait for a connection or for the next bytes of a download
    #[arg(long, global = true, env = "IMGBUILD_HTTP_TIMEOUT", value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build the image of every node of the cluster
    Build(build::BuildArgs),
    /// Build the image of one node
    Node(build::NodeArgs),
    /// Push node images (or an existing layout or archive) to an OCI registry
    Push(push::PushArgs),
    /// Pull an image pinned by digest from a registry into the store (for use as a base)
    Pull(push::PullArgs),
    /// Load node images into the local Podman or Docker (localhost/IMAGE:node-N)
    Load(load::LoadArgs),
    /// Write a deployment of the cluster: a Compose file or Kubernetes manifests
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// Write VM disks (a shared base, an overlay and a NoCloud seed per node) and VM templates
    Vm(vm::VmArgs),
    /// Download a URL into the store and print the hash to pin in a recipe
    Prefetch(prefetch::PrefetchArgs),
    /// Check the recipes and the image definition without building
    Check(check::CheckArgs),
    /// Work with the store
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Start a project: recipes, an image definition of three nodes and its templates
    Init(init::InitArgs),
    /// Print a ready recipe for files you have (tarballs, OCI archives and layouts) or URLs
    Recipe(recipe::RecipeArgs),
    /// Print the SBOM attached to an image (SPDX 2.3 or CycloneDX 1.5 JSON)
    Sbom(sbom::SbomArgs),
    /// Rebuild an image from its provenance and check it is the same, byte for byte
    Verify(verify::VerifyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(completions::CompletionsArgs),
    /// Print the manual page (roff), or write one per command with --dir
    Man(completions::ManArgs),
}

impl GlobalArgs {
    pub fn reporter(&self) -> Box<dyn Reporter> {
        if self.json || self.quiet {
            Box::new(SilentReporter)
        } else {
            Box::new(HumanReporter::new())
        }
    }

    pub fn open_store(&self) -> Result<crate::store::Store> {
        let root = self.store.clone().unwrap_or_else(crate::store::Store::default_root);
        crate::store::Store::open(&root)
    }

    pub fn fetch_settings(&self) -> Result<FetchSettings> {
        if self.timeout == 0 {
            return Err(Error::Usage("--timeout must be at least 1 second".into()));
        }
        if let Some(host) = self.insecure_registry.iter().find(|h| !crate::registry::reference::is_loopback_host(h)) {
            return Err(Error::Usage(format!(
                "--insecure-registry {host}: plain HTTP is only allowed for registries on loopback"
            )));
        }
        Ok(FetchSettings {
            offline: self.offline,
            mirror_dirs: self.mirror.clone(),
            timeout: Duration::from_secs(self.timeout),
            registries: RegistryAccess {
                mirrors: self.registry_mirror.clone(),
                insecure: self.insecure_registry.clone(),
                ca_files: self.ca_file.clone(),
            },
        })
    }

    /// The shared layer cache (`--cache`), if one is named.
    pub fn cache(&self) -> Result<Option<std::sync::Arc<crate::cache::Cache>>> {
        let Some(text) = self.cache.as_deref().filter(|t| !t.is_empty()) else { return Ok(None) };
        let repository: crate::registry::Reference = text.parse().map_err(|e| Error::Usage(format!("--cache: {e}")))?;
        if repository.tag.is_some() || repository.digest.is_some() {
            return Err(Error::Usage(format!(
                "--cache {}: name a repository (REGISTRY/REPO), without a tag or digest: imgbuild tags each layer's record itself",
                crate::error::escape(text)
            )));
        }
        let insecure = self.insecure_registry.contains(&repository.registry);
        let settings = crate::cache::CacheSettings {
            repository,
            ca_files: self.ca_file.clone(),
            insecure,
            timeout: Duration::from_secs(self.timeout),
            offline: self.offline,
        };
        Ok(Some(std::sync::Arc::new(crate::cache::Cache::new(settings))))
    }
}

/// Prints a JSON value on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON serializes"));
}

pub fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Build(args) => build::run_build(&cli.global, args),
        Command::Node(args) => build::run_node(&cli.global, args),
        Command::Push(args) => push::run_push(&cli.global, args),
        Command::Pull(args) => push::run_pull(&cli.global, args),
        Command::Load(args) => load::run(&cli.global, args),
        Command::Deploy(cmd) => deploy::run(&cli.global, cmd),
        Command::Vm(args) => vm::run(&cli.global, args),
        Command::Prefetch(args) => prefetch::run(&cli.global, args),
        Command::Check(args) => check::run(&cli.global, args),
        Command::Store(cmd) => store::run(&cli.global, cmd),
        Command::Init(args) => init::run(&cli.global, args),
        Command::Recipe(args) => recipe::run(&cli.global, args),
        Command::Sbom(args) => sbom::run(&cli.global, args),
        Command::Verify(args) => verify::run(&cli.global, args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    }
}

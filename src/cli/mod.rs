//! The command line: parses and validates arguments into settings, then calls the pipeline.
//! Results go to stdout (text, or JSON with `--json`); everything for humans goes to stderr.
//! Neither panics when its reader goes away: stdout's closing ends the command quietly
//! (`Error::StdoutClosed`), and a message nobody can read on stderr is dropped.

/// Like `println!`, for results: `Err(Error::StdoutClosed)` once stdout's reader has gone.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::out_line(format_args!($($arg)*)) };
}

/// Like `eprintln!`, for people: never fails, never panics.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::err_line(format_args!($($arg)*)) };
}

mod build;
mod cache;
mod check;
mod completions;
mod deploy;
mod diff;
mod doctor;
mod init;
mod load;
mod prefetch;
mod push;
mod recipe;
mod sbom;
mod store;
mod verify;
mod vm;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::fetch::{FetchSettings, RegistryAccess};
use crate::progress::{HumanReporter, Reporter, SilentReporter};
use crate::reference::RegistryMirror;

#[derive(Parser)]
#[command(
    name = "imgbuild",
    version,
    about = "Reproducible OCI images and VM disks for pinned clusters",
    max_term_width = 100,
    after_help = "Exit codes: 0 success, 1 bad input (recipe, definition, hash, tarball), 2 usage, 3 an input is\nunavailable, 4 store or output I/O, 5 registry, 6 the host is not ready: an external tool is missing or failed, 7 verify: the\nimage is not what its provenance builds, 10 diff --exit-code: the images differ, 70 internal error. With --json, errors are also printed as JSON."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args)]
// Shown after each command's own options, apart from them.
#[command(next_help_heading = "Global options")]
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
    #[arg(
        long,
        global = true,
        env = "IMGBUILD_REGISTRY_MIRROR",
        value_name = "HOST=MIRROR",
        value_delimiter = ',',
        value_parser = MirrorParser
    )]
    pub registry_mirror: Vec<RegistryMirror>,
    /// A registry repository shared as a layer cache (REGISTRY/REPO): a layer missing from the
    /// store is pulled from it (and checked), a layer built here is pushed to it
    #[arg(long, global = true, env = "IMGBUILD_CACHE", value_name = "REPO")]
    pub cache: Option<String>,
    /// A public key (NAME:BASE64, or a file holding one) whose signed --cache entries are used,
    /// besides those of imgbuild.toml and your config file (repeatable)
    #[arg(long, global = true, env = "IMGBUILD_CACHE_TRUSTED_KEYS", value_name = "KEY", value_delimiter = ',')]
    pub cache_trusted_key: Vec<String>,
    /// The secret key file that signs the layers pushed to --cache (see `imgbuild cache key
    /// generate`); without one, nothing is pushed
    #[arg(long, global = true, env = "IMGBUILD_CACHE_SIGNING_KEY", value_name = "FILE")]
    pub cache_signing_key: Option<PathBuf>,
    /// Speak plain HTTP to this registry: base images, --cache, and push, pull, sbom and verify
    /// as their --insecure does (loopback only; repeatable)
    #[arg(long, global = true, env = "IMGBUILD_INSECURE_REGISTRY", value_name = "HOST[:PORT]", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// A PEM file of certificates to trust for registries, besides the system's and certs.d
    /// (repeatable)
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Vec<PathBuf>,
    /// Seconds to wait for a connection or for the next bytes of a download; also the whole-request
    /// deadline of small documents and the grace before a download must keep 16 KiB/s
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
    /// Check what this host has for each feature (or those named): tools, their Debian
    /// packages, the store, KVM. Exit 0 when every feature asked about is ready, 1 otherwise
    Doctor(doctor::DoctorArgs),
    /// Print the hash to pin in a recipe for a URL or a file you have, and put the file into the store
    Prefetch(prefetch::PrefetchArgs),
    /// Check the recipes and the image definition without building
    Check(check::CheckArgs),
    /// Work with the store
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Keys of a shared cache (--cache)
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Start a project: recipes, an image definition of three nodes and its templates
    Init(init::InitArgs),
    /// Print a ready recipe for files you have (tarballs, OCI archives and layouts) or URLs
    Recipe(recipe::RecipeArgs),
    /// Print the SBOM attached to an image (SPDX 2.3 or CycloneDX 1.5 JSON)
    Sbom(sbom::SbomArgs),
    /// Rebuild an image from its provenance and check it is the same, byte for byte
    Verify(verify::VerifyArgs),
    /// Show what changed between two images or two builds: recipe inputs, layers, files, and
    /// the configuration each node renders at boot
    Diff(diff::DiffArgs),
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
        if let Some(host) = self.insecure_registry.iter().find(|h| !crate::reference::is_loopback_host(h)) {
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
            url_policy: None,
        })
    }

    /// The shared layer cache (`--cache`), if one is named, for layers of `media_type`.
    pub fn cache(&self, media_type: &'static str) -> Result<Option<std::sync::Arc<crate::cache::Cache>>> {
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
            media_type,
            keys: self.cache_keys()?,
        };
        Ok(Some(std::sync::Arc::new(crate::cache::Cache::new(settings))))
    }

    /// The cache keys of the project's imgbuild.toml, the user's config file and the options.
    fn cache_keys(&self) -> Result<crate::cache::Keys> {
        let trusted = self.cache_trusted_key.iter().map(|text| trusted_key(text)).collect::<Result<Vec<_>>>()?;
        crate::cache::load_keys(&self.project, &trusted, self.cache_signing_key.as_deref())
    }
}

/// A `--cache-trusted-key`: the key itself, or a file holding it (as `cache key generate`
/// writes it).
fn trusted_key(text: &str) -> Result<crate::cache::PublicKey> {
    let bad = |why: String| Error::Usage(format!("--cache-trusted-key: {why}"));
    match text.parse() {
        Ok(key) => Ok(key),
        Err(why) if !std::path::Path::new(text).is_file() => Err(bad(why)),
        Err(_) => {
            let path = std::path::Path::new(text);
            let contents = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            contents.trim().parse().map_err(|why| bad(format!("{}: {why}", path.display())))
        }
    }
}

/// `--registry-mirror` values, refused with their own message only: clap's would repeat the
/// value, which may hold a password.
#[derive(Clone)]
struct MirrorParser;

impl clap::builder::TypedValueParser for MirrorParser {
    type Value = RegistryMirror;

    fn parse_ref(
        &self,
        _: &clap::Command,
        _: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<RegistryMirror, clap::Error> {
        let refuse = |why: String| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("--registry-mirror: {why}\n"))
        };
        value.to_str().ok_or_else(|| refuse("not UTF-8".into()))?.parse().map_err(refuse)
    }
}

/// Prints a JSON value on stdout.
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value).expect("JSON serializes"))
}

/// Writes `data` to stdout (see `out_line`).
pub(crate) fn write_stdout(data: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(data).and_then(|()| out.flush()).map_err(stdout_error)
}

/// One line of results on stdout. A reader that stopped reading (`imgbuild check | head -1`)
/// is not a failure of the command: `Error::StdoutClosed` unwinds it, and it exits 0 quietly.
pub(crate) fn out_line(text: std::fmt::Arguments) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(text).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()).map_err(stdout_error)
}

fn stdout_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Error::StdoutClosed
    } else {
        Error::io("stdout", e)
    }
}

/// One line for people on stderr; dropped when nobody can read it (stderr closed or its
/// reader gone), which must not stop the work.
pub(crate) fn err_line(text: std::fmt::Arguments) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(text).and_then(|()| err.write_all(b"\n"));
}

/// Reports a failed command: the error and its hint on stderr, and with `--json` the error as
/// data on stdout. Nothing is said when stdout's reader went away: that ends a command quietly;
/// nor when `doctor` found the host not ready, which its report already says.
pub fn report_error(e: &Error, json: bool) {
    if matches!(e, Error::StdoutClosed | Error::NotReady | Error::Differs) {
        return;
    }
    errln!("error: {}", crate::error::printable(&e.to_string()));
    if let Some(hint) = e.hint() {
        errln!("hint: {}", crate::error::printable(&hint));
    }
    if json {
        let missing = match e {
            Error::MissingInputs(m) => serde_json::to_value(m).unwrap_or_default(),
            _ => serde_json::Value::Null,
        };
        // The exit code says it failed even when this cannot be printed.
        let _ = print_json(
            &serde_json::json!({ "error": e.to_string(), "exit_code": e.exit_code() as i32, "missing": missing }),
        );
    }
}

/// What a path named on the command line must be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    File,
    Directory,
    /// A file or a directory (an OCI layout, an archive, a tarball).
    Any,
}

/// A path named on the command line must exist (as `kind`) before any work: one error for every
/// command and option, exit 2 (usage), naming the option and the path.
pub(crate) fn existing(option: Option<&str>, path: &std::path::Path, kind: PathKind) -> Result<()> {
    let named = match option {
        Some(option) => format!("{option} {}", crate::error::escape(&path.display().to_string())),
        None => crate::error::escape(&path.display().to_string()),
    };
    // A dangling link is as missing as no entry; a path that cannot be examined (permissions)
    // is left to the command, which says why when it opens it.
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::Usage(format!("{named}: no such {}", kind.noun())))
        }
        Err(_) => Ok(()),
        Ok(meta) if kind == PathKind::File && meta.is_dir() => {
            Err(Error::Usage(format!("{named}: a directory, not a file")))
        }
        Ok(meta) if kind == PathKind::Directory && !meta.is_dir() => {
            Err(Error::Usage(format!("{named}: not a directory")))
        }
        Ok(_) => Ok(()),
    }
}

impl PathKind {
    fn noun(self) -> &'static str {
        match self {
            PathKind::File => "file",
            PathKind::Directory => "directory",
            PathKind::Any => "file or directory",
        }
    }
}

/// The paths every command may be given (`--project`, `--mirror`, `--ca-file`), checked before
/// it starts.
fn check_global_paths(global: &GlobalArgs, command: &Command) -> Result<()> {
    // `init` makes its project directory; `doctor` reads none.
    if !matches!(command, Command::Init(_) | Command::Doctor(_)) {
        existing(Some("--project (IMGBUILD_PROJECT)"), &global.project, PathKind::Directory)?;
    }
    for dir in &global.mirror {
        existing(Some("--mirror (IMGBUILD_MIRROR)"), dir, PathKind::Directory)?;
    }
    for file in &global.ca_file {
        existing(Some("--ca-file"), file, PathKind::File)?;
    }
    Ok(())
}

pub fn run(cli: Cli) -> Result<()> {
    check_global_paths(&cli.global, &cli.command)?;
    match &cli.command {
        Command::Build(args) => build::run_build(&cli.global, args),
        Command::Node(args) => build::run_node(&cli.global, args),
        Command::Push(args) => push::run_push(&cli.global, args),
        Command::Pull(args) => push::run_pull(&cli.global, args),
        Command::Load(args) => load::run(&cli.global, args),
        Command::Deploy(cmd) => deploy::run(&cli.global, cmd),
        Command::Vm(args) => vm::run(&cli.global, args),
        Command::Doctor(args) => doctor::run(&cli.global, args),
        Command::Prefetch(args) => prefetch::run(&cli.global, args),
        Command::Check(args) => check::run(&cli.global, args),
        Command::Store(cmd) => store::run(&cli.global, cmd),
        Command::Cache(cmd) => cache::run(&cli.global, cmd),
        Command::Init(args) => init::run(&cli.global, args),
        Command::Recipe(args) => recipe::run(&cli.global, args),
        Command::Sbom(args) => sbom::run(&cli.global, args),
        Command::Verify(args) => verify::run(&cli.global, args),
        Command::Diff(args) => diff::run(&cli.global, args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    }
}

//! `imgbuild recipe FILE|URL…`: a ready recipe for each file. Local files, `file://` URLs and
//! files of `--mirror` directories are read where they are (no network, no store); `http(s)://`
//! URLs are downloaded into the store unless `--offline`. `--add` also puts the files into the
//! store, so the next build finds them offline. `--update RECIPE` writes the files into an
//! existing recipe as its sources instead of printing a new one.

use std::path::{Component, Path, PathBuf};

use crate::digest::{Algorithm, Hash};
use crate::error::{escape, Error, MissingInput, Result};
use crate::fetch::Fetcher;
use crate::pin::{self, tarball::Layout, Choices, Location, Proposal, ProposalKind};
use crate::store::{Store, StoreLock};

use super::GlobalArgs;

#[derive(clap::Args)]
pub struct RecipeArgs {
    /// Tarballs, OCI archives or OCI layouts (`podman save --format oci-archive`, `skopeo copy …
    /// oci:DIR`): paths, file:// or http(s):// URLs, or names of files in a --mirror directory
    #[arg(required = true, value_name = "FILE|URL")]
    pub inputs: Vec<String>,
    /// Also add the files to the store, so a build finds them offline
    #[arg(long)]
    pub add: bool,
    /// The recipe's name (one input) [default: from the file name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The upstream version (one input) [default: from the file name]
    #[arg(long = "upstream-version", value_name = "VERSION")]
    pub version: Option<String>,
    /// Where a tarball's files go in the image (one input): writes `[unpack]` instead of suggesting it
    #[arg(long, value_name = "DIR")]
    pub prefix: Option<String>,
    /// The platform a tarball is for (one input), or `any` [default: from the file name (x64,
    /// aarch64, …), else any]
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Pin tarballs with sha512 instead of sha256 [default with --update: as the recipe pins]
    #[arg(long)]
    pub sha512: bool,
    /// Make the files given the sources of this existing recipe (recipes/NAME.toml), in place,
    /// keeping the rest of it as written: env, path, [unpack] and its excludes, comments
    #[arg(long, value_name = "RECIPE", conflicts_with_all = ["name", "prefix"])]
    pub update: Option<PathBuf>,
    /// With --update or --add: accept a file named as the upstream file a recipe pins but with
    /// other bytes, replacing that pin (its URL and published hash) on purpose [default: refused]
    #[arg(long = "replace-pin")]
    pub replace_pin: bool,
}

/// The store, opened only when a download or `--add` needs it, and held against `store gc`.
pub(super) struct LazyStore<'g> {
    global: &'g GlobalArgs,
    opened: Option<(Store, StoreLock)>,
}

impl<'g> LazyStore<'g> {
    pub(super) fn new(global: &'g GlobalArgs) -> Self {
        LazyStore { global, opened: None }
    }

    pub(super) fn get(&mut self) -> Result<&Store> {
        if self.opened.is_none() {
            let store = self.global.open_store()?;
            let lock = store.build_lock_shared()?;
            self.opened = Some((store, lock));
        }
        Ok(&self.opened.as_ref().expect("opened above").0)
    }
}

/// A file to pin: where it is on this machine, and how the recipe will name it.
pub(super) struct Found {
    pub(super) path: PathBuf,
    pub(super) location: Location,
    /// Downloaded now, with this hash and size: it is in the store already.
    pub(super) downloaded: Option<(Hash, u64)>,
}

/// The command that found a file, for the `add it` line of what it could not find: a command
/// that works in any mode, given the file.
#[derive(Clone, Copy)]
pub(super) enum Finder {
    Recipe,
    Prefetch,
}

impl Finder {
    fn add_command(self, file_name: &str) -> String {
        match self {
            Finder::Recipe => format!("imgbuild recipe --add {file_name}"),
            Finder::Prefetch => format!("imgbuild prefetch {file_name}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Finder::Recipe => "recipe",
            Finder::Prefetch => "prefetch",
        }
    }
}

pub(super) fn run(global: &GlobalArgs, args: &RecipeArgs) -> Result<()> {
    if let Some(recipe_file) = &args.update {
        return run_update(global, args, recipe_file);
    }
    let choices = choices(args)?;
    let mut store = LazyStore::new(global);
    let mut results = Vec::new();
    let pinned = pin_inputs(global, &mut store, args, &choices)?;
    if args.add {
        let recipes = super::store::project_recipes(global)?;
        keep_pins(args, &recipes.iter().collect::<Vec<_>>(), &pinned)?;
    }
    for (found, proposals) in pinned {
        let added = store_if_asked(&mut store, args, &found, &proposals)?;
        results.extend(proposals.into_iter().map(|p| (p, added)));
    }
    print_results(global, &results)
}

/// Each input found and pinned: its recipes, checked to be ones imgbuild accepts.
fn pin_inputs(
    global: &GlobalArgs,
    store: &mut LazyStore,
    args: &RecipeArgs,
    choices: &Choices,
) -> Result<Vec<(Found, Vec<Proposal>)>> {
    let algorithm = choices.algorithm.unwrap_or(Algorithm::Sha256);
    let mut pinned = Vec::new();
    for input in &args.inputs {
        let found = find(global, store, input, algorithm, Finder::Recipe)?;
        let proposals = propose(&found, input, choices)?;
        proposals.iter().try_for_each(check_parses)?;
        pinned.push((found, proposals));
    }
    Ok(pinned)
}

/// With `--add`, puts the file into the store; a downloaded image is imported too, since its
/// blobs, not only the archive, serve a build. Whether the file is in the store now.
fn store_if_asked(store: &mut LazyStore, args: &RecipeArgs, found: &Found, proposals: &[Proposal]) -> Result<bool> {
    if args.add || found.downloaded.is_some() {
        add(store, found, proposals)
    } else {
        Ok(false)
    }
}

/// Refuses a file named as a source of `recipes` expects but with other bytes, unless
/// `--replace-pin` says to replace that pin (`pin::guard`).
fn keep_pins(args: &RecipeArgs, recipes: &[&crate::recipe::Recipe], pinned: &[(Found, Vec<Proposal>)]) -> Result<()> {
    if args.replace_pin {
        return Ok(());
    }
    let given: Vec<(&Proposal, &Path)> =
        pinned.iter().flat_map(|(found, ps)| ps.iter().map(|p| (p, found.path.as_path()))).collect();
    pin::guard::check(recipes, &given, |path, algorithm| {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(crate::digest::hash_reader(algorithm, file).map_err(|e| Error::io(path, e))?.0)
    })
}

/// `--update RECIPE`: the recipe's sources become the files given, the rest of it is kept; the
/// file is replaced whole (written beside it, then renamed), and only once everything is pinned.
fn run_update(global: &GlobalArgs, args: &RecipeArgs, recipe_file: &Path) -> Result<()> {
    super::existing(Some("--update"), recipe_file, super::PathKind::File)?;
    let text = std::fs::read_to_string(recipe_file).map_err(|e| Error::io(recipe_file, e))?;
    let recipe = crate::recipe::Recipe::parse(recipe_file, &text)?;
    let mut choices = choices(args)?;
    if !args.sha512 {
        // The algorithm the recipe pins by, so that a file it already pins is recognized.
        choices.algorithm = recipe.sources.first().map(|s| s.hash.algorithm()).or(choices.algorithm);
    }
    let mut store = LazyStore::new(global);
    let pinned = pin_inputs(global, &mut store, args, &choices)?;
    let proposals: Vec<Proposal> = pinned.iter().flat_map(|(_, p)| p.clone()).collect();
    let updated = pin::update::update(recipe_file, &text, &proposals)?;
    let project = match args.add {
        true => super::store::project_recipes(global)?,
        false => Vec::new(),
    };
    keep_pins(args, &std::iter::once(&recipe).chain(&project).collect::<Vec<_>>(), &pinned)?;
    let mut added = false;
    for (found, proposals) in &pinned {
        added |= store_if_asked(&mut store, args, found, proposals)?;
    }
    replace_file(recipe_file, &updated.text)?;
    let shown = escape(&recipe_file.display().to_string());
    if global.json {
        return super::print_json(&serde_json::json!({
            "updated": recipe_file,
            "sources_kept": updated.kept,
            "sources_new": updated.replaced,
            "version": updated.version.as_ref().map(|(_, v)| v),
            "image": updated.image.as_ref().map(|(_, i)| i),
            "added": added,
            "warnings": updated.warnings,
        }));
    }
    outln!("{shown}")?;
    if !global.quiet {
        let version = updated
            .version
            .as_ref()
            .map_or(String::new(), |(old, new)| format!("; version {} → {}", escape(old), escape(new)));
        let image = updated.image.as_ref().map_or(String::new(), |(old, new)| {
            format!("; image {} → {}", old.as_deref().map_or("(none)".into(), escape), escape(new))
        });
        errln!(
            "updated {shown} (recipe {}): {} new source(s), {} kept as they were{version}{image}; its other fields and comments are as they were{}",
            recipe.name,
            updated.replaced,
            updated.kept,
            if added { "; the files are in the store" } else { "" }
        );
        for w in &updated.warnings {
            errln!("warning: {w}");
        }
    }
    Ok(())
}

/// Replaces the recipe `path` with `text` (keeping its permissions): the old one or the new
/// one, never a part, and never written through a link (`atomic_file`).
fn replace_file(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let kept = std::fs::symlink_metadata(path).ok().filter(|m| m.is_file()).map(|m| m.permissions().mode() & 0o7777);
    let options = crate::atomic_file::Options { mode: kept, ..crate::atomic_file::Options::REPLACE };
    crate::atomic_file::write(path, text.as_bytes(), options)
}

/// The recipes on stdout (TOML, or JSON with `--json`), a line about each on stderr.
fn print_results(global: &GlobalArgs, results: &[(Proposal, bool)]) -> Result<()> {
    if global.json {
        let recipes: Vec<serde_json::Value> = results
            .iter()
            .map(|(p, added)| {
                let mut v = pin::to_json(p);
                v["added"] = serde_json::Value::Bool(*added);
                v
            })
            .collect();
        super::print_json(&serde_json::json!({ "recipes": recipes }))?;
        return Ok(());
    }
    let blocks: Vec<String> = results.iter().map(|(p, _)| pin::render(p)).collect();
    super::write_stdout(blocks.join("\n").as_bytes())?;
    if !global.quiet {
        for (p, added) in results {
            errln!("{}", summary(p, *added));
        }
        errln!(
            "next: save each recipe as the file its first line names; list a tarball's recipe in an image's `layers`, an image's as its `base`; then `imgbuild check`"
        );
    }
    Ok(())
}

/// The options, checked before anything is read.
fn choices(args: &RecipeArgs) -> Result<Choices> {
    let single = [
        ("--name", args.name.is_some()),
        ("--upstream-version", args.version.is_some()),
        ("--prefix", args.prefix.is_some()),
        ("--platform", args.platform.is_some()),
    ];
    if let Some((flag, _)) = single.iter().find(|(_, given)| *given).filter(|_| args.inputs.len() > 1) {
        return Err(Error::Usage(format!("{flag} describes one recipe: give one input with it")));
    }
    if let Some(name) = &args.name {
        if !pin::name::is_recipe_name(name) {
            return Err(Error::Usage(format!("--name `{}`: use only a-z, 0-9, `.`, `_`, `-`", escape(name))));
        }
    }
    if let Some(v) = &args.version {
        if v.is_empty() || v.chars().any(crate::error::is_unsafe_char) {
            return Err(Error::Usage(format!("--upstream-version `{}`: not a version", escape(v))));
        }
    }
    if let Some(prefix) = &args.prefix {
        let path = Path::new(prefix);
        let plain = path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !path.is_absolute() || !plain || prefix.chars().any(crate::error::is_unsafe_char) {
            return Err(Error::Usage(format!(
                "--prefix `{}`: an absolute path in the image, without `.` or `..`",
                escape(prefix)
            )));
        }
    }
    let platform = match args.platform.as_deref() {
        None => None,
        Some("any") => Some(None),
        Some(text) => {
            Some(Some(text.parse().map_err(|e: String| Error::Usage(format!("--platform: {}", escape(&e))))?))
        }
    };
    Ok(Choices {
        platform,
        name: args.name.clone(),
        version: args.version.clone(),
        prefix: args.prefix.clone(),
        algorithm: Some(if args.sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 }),
    })
}

/// Finds `input` (a path, a `file://` URL, a name in a `--mirror` directory, or an http(s) URL)
/// on this machine, downloading an http(s) URL that no mirror directory has, unless offline.
pub(super) fn find(
    global: &GlobalArgs,
    store: &mut LazyStore,
    input: &str,
    algorithm: Algorithm,
    finder: Finder,
) -> Result<Found> {
    if input.starts_with("http://") || input.starts_with("https://") {
        return find_url(global, store, input, algorithm, finder);
    }
    let path = match input.split_once("://") {
        Some(("file", rest)) => file_url_path(input, rest)?,
        Some((scheme, _)) => {
            return Err(Error::Usage(format!(
                "`{}`: the {} scheme is not supported (give a path, a file:// or an http(s):// URL)",
                escape(input),
                escape(scheme)
            )))
        }
        None => PathBuf::from(input),
    };
    if path.exists() {
        let location = Location::File(local_name(&path)?);
        return Ok(Found { path, location, downloaded: None });
    }
    // A bare name: the file as it is called upstream, in a mirror directory.
    if !input.contains('/') {
        if let Some(path) = global.mirror.iter().map(|d| d.join(input)).find(|p| p.exists()) {
            return Ok(Found { path, location: Location::File(input.to_string()), downloaded: None });
        }
    }
    let mirrors: Vec<String> = global.mirror.iter().map(|d| d.display().to_string()).collect();
    Err(Error::Usage(format!(
        "{}: no such file or directory{}",
        escape(&path.display().to_string()),
        if mirrors.is_empty() || input.contains('/') {
            String::new()
        } else {
            format!(" (nor in the --mirror directories {})", escape(&mirrors.join(", ")))
        }
    )))
}

fn find_url(
    global: &GlobalArgs,
    store: &mut LazyStore,
    url: &str,
    algorithm: Algorithm,
    finder: Finder,
) -> Result<Found> {
    let file_name = crate::recipe::url_file_name(url);
    let location = Location::Url(url.to_string());
    if let Some(path) = global.mirror.iter().map(|d| d.join(file_name)).find(|p| p.is_file()) {
        return Ok(Found { path, location, downloaded: None });
    }
    let not_there = global.mirror.iter().map(|d| format!("{}: not there", d.join(file_name).display()));
    let missing = |reasons: Vec<String>| {
        Error::MissingInputs(vec![MissingInput {
            recipe: finder.name().into(),
            platform: "-".into(),
            file: file_name.to_string(),
            urls: vec![url.to_string()],
            hash: "unknown".into(),
            reasons,
            add: finder.add_command(file_name),
        }])
    };
    if global.offline {
        return Err(missing(not_there.chain(["offline: not downloaded".to_string()]).collect()));
    }
    let settings = global.fetch_settings()?;
    let reporter = global.reporter();
    let store = store.get()?;
    match Fetcher::new(store, &settings, reporter.as_ref()).prefetch(url, algorithm) {
        Ok((hash, size)) => Ok(Found { path: store.blob_path(&hash), location, downloaded: Some((hash, size)) }),
        // Named again with what adds the file here once it is had by other means.
        Err(Error::MissingInputs(tried)) => {
            Err(missing(not_there.chain(tried.into_iter().flat_map(|m| m.reasons)).collect()))
        }
        Err(e) => Err(e),
    }
}

/// `file:///abs/path` or `file://localhost/abs/path`, percent-decoded.
fn file_url_path(input: &str, rest: &str) -> Result<PathBuf> {
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return Err(Error::Usage(format!(
            "`{}`: a file:// URL names a local absolute path (file:///srv/mirror/f.tar.gz)",
            escape(input)
        )));
    }
    let bytes = crate::pin::name::percent_decode(path)
        .ok_or_else(|| Error::Usage(format!("`{}`: a `%` not followed by two hex digits", escape(input))))?;
    Ok(PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes)))
}

/// The name a recipe's `file` gives a local file (or layout directory).
fn local_name(path: &Path) -> Result<String> {
    let absolute = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let name = absolute.file_name().map(|n| n.to_str().map(str::to_string));
    match name {
        Some(Some(n)) => Ok(n),
        _ => Err(Error::Usage(format!(
            "{}: its name is not UTF-8 text, which a recipe's `file` cannot hold: rename it",
            escape(&path.display().to_string())
        ))),
    }
}

fn propose(found: &Found, input: &str, choices: &Choices) -> Result<Vec<Proposal>> {
    let path = &found.path;
    if path.is_dir() {
        if !path.join("index.json").is_file() {
            return Err(Error::Usage(format!(
                "{}: a directory, but not an OCI layout (no index.json)",
                escape(&path.display().to_string())
            )));
        }
        return pin::images(path, input, found.location.clone(), choices);
    }
    if crate::import::is_oci_archive(path) {
        return pin::images(path, input, found.location.clone(), choices);
    }
    Ok(vec![pin::tarball(path, input, found.location.clone(), choices)?])
}

/// Puts the file into the store (an image blob by blob, each checked). Returns true.
fn add(store: &mut LazyStore, found: &Found, proposals: &[Proposal]) -> Result<bool> {
    let store = store.get()?;
    match proposals.first().map(|p| &p.kind) {
        // A download is in the store already, under its hash.
        Some(ProposalKind::Tarball { .. }) if found.downloaded.is_some() => {}
        Some(ProposalKind::Tarball { hash, .. }) => {
            store.add_file(&found.path, hash.algorithm(), Some(hash))?;
        }
        Some(ProposalKind::Image { .. }) => {
            crate::import::import(store, &found.path)?;
        }
        None => {}
    }
    Ok(true)
}

/// What is printed must be a recipe imgbuild accepts: if not, that is a bug here.
fn check_parses(p: &Proposal) -> Result<()> {
    let name = format!("recipes/{}.toml", p.name);
    crate::recipe::Recipe::parse(Path::new(&name), &pin::render(p))
        .map(|_| ())
        .map_err(|e| Error::Internal(format!("`imgbuild recipe` wrote a recipe that does not parse: {e}")))
}

/// One line for people: what was pinned and what the layout suggests.
fn summary(p: &Proposal, added: bool) -> String {
    let stored = if added { "; in the store" } else { "" };
    match &p.kind {
        ProposalKind::Tarball { hash, layout, .. } => {
            let shape = match layout {
                Layout::Listed { top_dir: Some(top), .. } => format!("every entry under {}/", escape(top)),
                Layout::Listed { top_dir: None, .. } => "no one top directory".into(),
                Layout::Unreadable { reason } => {
                    format!("warning: could not list its entries ({}); a source must be a tarball", escape(reason))
                }
                Layout::DockerArchive => "a docker-archive".into(),
            };
            format!("recipe {}: {}, {}, {shape}{stored}", p.name, escape(&p.input), hash)
        }
        ProposalKind::Image { images, .. } => {
            let list: Vec<String> = images.iter().map(|i| format!("{} {}", i.platform, i.digest)).collect();
            format!("recipe {} (oci-image): {}: {}{stored}", p.name, escape(&p.input), list.join(", "))
        }
    }
}

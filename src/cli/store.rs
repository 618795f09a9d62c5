//! `imgbuild store add|verify|path`.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Hash, Hasher};
use crate::error::{Error, IoContext, Result};
use crate::fetch::{named_archive, NamedArchive};
use crate::recipe::{Recipe, RecipeKind, Source};
use crate::store::Store;

use super::GlobalArgs;

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Import files fetched by other means, matched to recipes by hash; OCI layouts and
    /// oci-archives (base images) are imported blob by blob
    Add {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Re-hash every blob and report any whose content does not match its name
    Verify {
        /// Delete the blobs that do not match, so the next build fetches or rebuilds them
        #[arg(long)]
        repair: bool,
    },
    /// Remove what no kept output needs and the project's recipes do not pin (waits for running builds)
    Gc {
        /// Only report what would be removed
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the store's location
    Path,
}

pub(super) fn run(global: &GlobalArgs, cmd: &StoreCommand) -> Result<()> {
    if let StoreCommand::Add { paths } = cmd {
        for path in paths {
            super::existing(None, path, super::PathKind::Any)?;
        }
    }
    let store = global.open_store()?;
    match cmd {
        StoreCommand::Add { paths } => add(global, &store, paths),
        StoreCommand::Verify { repair } => verify(global, &store, *repair),
        StoreCommand::Gc { dry_run } => {
            let pinned = crate::gc::pinned_by(&store, &project_recipes(global)?);
            let report = crate::gc::collect(&store, &pinned, *dry_run)?;
            if global.json {
                super::print_json(&serde_json::to_value(&report).expect("serializes"))?;
            } else if !global.quiet {
                let verb = if *dry_run { "would remove" } else { "removed" };
                errln!(
                    "{verb} {} blob(s) ({} bytes) and {} temporary file(s); kept {} blob(s) of {} live output(s)",
                    report.removed_blobs,
                    report.removed_bytes,
                    report.removed_temp_files,
                    report.kept_blobs,
                    report.live_roots
                );
            }
            Ok(())
        }
        StoreCommand::Path => {
            outln!("{}", store.root().display())?;
            Ok(())
        }
    }
}

/// The `oci-image` recipes (and their platforms) whose pinned digests were imported.
pub(super) fn matching_image_recipes(recipes: &[Recipe], imported: &crate::import::Imported) -> Vec<String> {
    let mut matched = Vec::new();
    for r in recipes {
        if let RecipeKind::OciImage { index_digest, .. } = &r.kind {
            for s in &r.sources {
                if imported.manifests.iter().any(|(d, _)| d.to_hash() == s.hash) {
                    matched.push(format!(
                        "{} ({})",
                        r.name,
                        s.platform.as_ref().map_or("any".into(), |p| p.to_string())
                    ));
                }
            }
            if index_digest.is_some_and(|d| imported.indexes.contains(&d)) {
                matched.push(format!("{} (index)", r.name));
            }
        }
    }
    matched
}

/// The recipes of the project, if there is one here: `store add` works without.
pub(super) fn project_recipes(global: &GlobalArgs) -> Result<Vec<Recipe>> {
    Ok(crate::project::Project::recipes_in(&global.project)?.into_values().collect())
}

fn platform_of(source: &Source) -> String {
    source.platform.as_ref().map_or("any platform".into(), |p| p.to_string())
}

fn hash_both(path: &Path) -> Result<(Hash, Hash)> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path).at(path)?);
    let mut a = Hasher::new(Algorithm::Sha256);
    let mut b = Hasher::new(Algorithm::Sha512);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        a.update(&buf[..n]);
        b.update(&buf[..n]);
    }
    Ok((a.finish(), b.finish()))
}

fn add(global: &GlobalArgs, store: &Store, paths: &[PathBuf]) -> Result<()> {
    // Like a build: a concurrent `store gc` waits until the import is complete.
    let _importing = store.build_lock_shared()?;
    let recipes = project_recipes(global)?;
    let say = !global.json && !global.quiet;
    let mut results = Vec::new();
    for path in paths {
        let added = if path.is_dir() || crate::import::is_oci_archive(path) {
            add_image(store, path, &recipes, say)?
        } else {
            add_file(store, path, &recipes, say)?
        };
        results.push(added);
    }
    if global.json {
        super::print_json(&serde_json::json!({ "added": results }))?;
    }
    Ok(())
}

/// The sources of `recipes` that expect a file named as `path` is (`--mirror` and `store add`
/// find files by that name), by recipe.
fn named_sources<'r>(recipes: &'r [Recipe], path: &Path) -> Vec<(&'r Recipe, Vec<&'r Source>)> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return Vec::new() };
    recipes
        .iter()
        .map(|r| (r, r.sources.iter().filter(|s| s.file_name == name).collect::<Vec<_>>()))
        .filter(|(_, sources)| !sources.is_empty())
        .collect()
}

/// Imports an OCI layout or oci-archive blob by blob; says which recipes' digests it holds.
/// One named as an image recipe's source expects must hold an image it pins: else nothing is
/// imported (its name promises what its content is not).
fn add_image(store: &Store, path: &Path, recipes: &[Recipe], say: bool) -> Result<serde_json::Value> {
    for (recipe, sources) in named_sources(recipes, path) {
        if matches!(recipe.kind, RecipeKind::OciImage { .. }) {
            if let NamedArchive::Mismatch(e) = named_archive(path, recipe, &sources)? {
                return Err(e);
            }
        }
    }
    let imported = crate::import::import(store, path)?;
    let matched = matching_image_recipes(recipes, &imported);
    if say {
        for (d, p) in &imported.manifests {
            errln!("imported image {d} ({}) from {}", p.as_deref().unwrap_or("platform not given"), path.display());
        }
        if matched.is_empty() {
            let shown = crate::error::escape(&path.display().to_string());
            errln!("warning: {shown} matches no oci-image recipe's digest");
            errln!("hint: `imgbuild recipe {shown}` prints its recipe (digest and platform)");
        }
    }
    Ok(serde_json::json!({ "path": path, "kind": "oci-image", "imported": imported, "recipes": matched }))
}

/// Stores a file under every hash a recipe pins it by (sha256 when none does). A file no recipe
/// pins but named as a recipe's source expects is refused, nothing stored: its name promises
/// what its content is not (a wrong pin, or the wrong file).
fn add_file(store: &Store, path: &Path, recipes: &[Recipe], say: bool) -> Result<serde_json::Value> {
    let (sha256, sha512) = hash_both(path)?;
    let in_algorithm = |a: Algorithm| if a == Algorithm::Sha256 { &sha256 } else { &sha512 };
    let mut matched = Vec::new();
    let mut algorithms = Vec::new();
    for r in recipes {
        for s in r.sources.iter().filter(|s| s.hash == sha256 || s.hash == sha512) {
            matched.push(format!("{} ({})", r.name, s.platform.as_ref().map_or("any".into(), |p| p.to_string())));
            if !algorithms.contains(&s.hash.algorithm()) {
                algorithms.push(s.hash.algorithm());
            }
        }
    }
    if matched.is_empty() {
        if let Some((recipe, sources)) = named_sources(recipes, path).into_iter().next() {
            let source = sources[0];
            return Err(Error::HashMismatch {
                what: format!(
                    "{} (named as recipe {}'s source for {} in {}); nothing was stored",
                    path.display(),
                    recipe.name,
                    platform_of(source),
                    recipe.file.display()
                ),
                expected: source.hash.clone(),
                found: in_algorithm(source.hash.algorithm()).clone(),
            });
        }
    }
    if algorithms.is_empty() {
        algorithms.push(Algorithm::Sha256);
    }
    for algorithm in algorithms {
        store.add_file(path, algorithm, Some(in_algorithm(algorithm)))?;
    }
    if say {
        let shown = crate::error::escape(&path.display().to_string());
        if matched.is_empty() {
            // In each algorithm the project's recipes pin by, to compare with a pin at a glance.
            let mut pinned_by: Vec<Algorithm> =
                recipes.iter().flat_map(|r| &r.sources).map(|s| s.hash.algorithm()).collect();
            pinned_by.retain(|a| *a != Algorithm::Sha256);
            pinned_by.dedup();
            let also: Vec<String> = pinned_by.iter().map(|a| format!(", {}", in_algorithm(*a))).collect();
            errln!(
                "added {shown} as {sha256}{}; warning: no recipe pins this file; `imgbuild recipe {shown}` prints one",
                also.concat()
            );
        } else {
            errln!("added {shown} for {}", matched.join(", "));
        }
    }
    Ok(
        serde_json::json!({ "path": path, "kind": "file", "sha256": sha256.to_string(), "sha512": sha512.to_string(), "recipes": matched }),
    )
}

fn verify(global: &GlobalArgs, store: &Store, repair: bool) -> Result<()> {
    let mut count = 0usize;
    let bad = store.verify(|path, ok| {
        count += 1;
        if !ok && !global.json {
            errln!("corrupt: {}", path.display());
        }
    })?;
    if repair {
        for path in &bad {
            std::fs::remove_file(path).at(path)?;
        }
    }
    if global.json {
        super::print_json(&serde_json::json!({ "checked": count, "corrupt": bad, "repaired": repair }))?;
    } else if !global.quiet {
        errln!(
            "checked {count} blob(s): {} corrupt{}",
            bad.len(),
            if repair && !bad.is_empty() { ", removed" } else { "" }
        );
    }
    if bad.is_empty() || repair {
        Ok(())
    } else {
        Err(Error::Store {
            path: store.root().to_path_buf(),
            message: format!(
                "{} blob(s) do not match their digest; `imgbuild store verify --repair` removes them",
                bad.len()
            ),
        })
    }
}

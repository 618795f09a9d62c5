//! Garbage collection of the store, with Nix's rule: what a root reaches stays.
//!
//! Roots are the outputs imgbuild wrote (`STORE/roots/<hash of the output path>.json`, listing
//! the blobs the output holds); a root whose output path no longer exists is dead. Every build
//! holds the store's *build lock* shared for its whole run and `gc` takes it exclusively, so a
//! collection never runs while a build is using blobs it has not yet registered.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::build::NodeImage;
use crate::digest::{Hash, Sha256Digest};
use crate::error::{IoContext, Result};
use crate::image::BaseImage;
use crate::image_def::ImageDef;
use crate::platform::Platform;
use crate::recipe::{Recipe, RecipeKind, Source};
use crate::store::Store;

#[derive(serde::Serialize, serde::Deserialize)]
struct Root {
    output: PathBuf,
    /// `sha256:…` and `sha512:…` names of the blobs the output holds or was built from.
    blobs: Vec<String>,
}

fn roots_dir(store: &Store) -> PathBuf {
    store.root().join("roots")
}

/// Records that the output at `path` needs `blobs` (what it holds, and what it was built from),
/// so `gc` keeps them while it exists.
pub fn register_root(store: &Store, output: &Path, blobs: impl IntoIterator<Item = Hash>) -> Result<()> {
    let output = std::path::absolute(output).at(output)?;
    let dir = roots_dir(store);
    fs::create_dir_all(&dir).at(&dir)?;
    let name = Sha256Digest::of(output.as_os_str().as_encoded_bytes()).hex();
    let root = Root { output, blobs: blobs.into_iter().map(|h| h.to_string()).collect() };
    store.write_atomic(&dir.join(format!("{name}.json")), &serde_json::to_vec(&root).expect("serializes"))
}

#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub live_roots: usize,
    /// Blobs kept because the current project's recipes pin them.
    pub pinned: usize,
    pub dead_roots: usize,
    pub kept_blobs: usize,
    pub removed_blobs: usize,
    pub removed_bytes: u64,
    pub removed_temp_files: usize,
}

/// Removes every blob no live root reaches (nor `pinned`: what the current project's recipes
/// pin), the layer records of removed layers, dead roots and temporary files. Waits for running
/// builds to finish first. `dry_run` only reports.
pub fn collect(store: &Store, pinned: &[Hash], dry_run: bool) -> Result<GcReport> {
    let _exclusive = store.build_lock_exclusive()?;
    let mut report = GcReport { pinned: pinned.len(), ..GcReport::default() };
    let mut keep: BTreeSet<String> = pinned.iter().map(|h| h.to_string()).collect();
    let dir = roots_dir(store);
    let mut dead = Vec::new();
    if dir.is_dir() {
        for entry in fs::read_dir(&dir).at(&dir)? {
            let path = entry.at(&dir)?.path();
            let root: Option<Root> = fs::read(&path).ok().and_then(|d| serde_json::from_slice(&d).ok());
            match root {
                Some(root) if root.output.exists() => {
                    report.live_roots += 1;
                    keep.extend(root.blobs);
                }
                _ => dead.push(path),
            }
        }
    }
    report.dead_roots = dead.len();
    for (algorithm, path) in store.blobs()? {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if keep.contains(&format!("{}:{name}", algorithm.name())) {
            report.kept_blobs += 1;
            continue;
        }
        report.removed_blobs += 1;
        report.removed_bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if !dry_run {
            fs::remove_file(&path).at(&path)?;
        }
    }
    let tmp = store.root().join("tmp");
    for entry in fs::read_dir(&tmp).at(&tmp)? {
        let path = entry.at(&tmp)?.path();
        report.removed_temp_files += 1;
        if !dry_run {
            fs::remove_file(&path).at(&path)?;
        }
    }
    if !dry_run {
        for path in dead {
            fs::remove_file(&path).at(&path)?;
        }
        // A layer record whose blob is gone is already ignored; drop it to keep the index small.
        let layers = store.root().join("layers");
        for entry in fs::read_dir(&layers).at(&layers)? {
            let path = entry.at(&layers)?.path();
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let live = format!("sha256:{stem}").parse::<Sha256Digest>().ok().and_then(|d| store.layer(&d)).is_some();
            if !live {
                fs::remove_file(&path).at(&path)?;
            }
        }
    }
    Ok(report)
}

/// What one recipe source needs in the store: the source itself and, for a base image, its
/// config and layers (the manifest is the source).
fn source_blobs(store: &Store, recipe: &Recipe, source: &Source, hashes: &mut Vec<Hash>) {
    hashes.push(source.hash.clone());
    if recipe.kind == RecipeKind::Tarball {
        return;
    }
    if let Some(base) = source.hash.as_sha256().and_then(|d| BaseImage::load(store, &d).ok()) {
        hashes.push(base.config_digest.to_hash());
        hashes.extend(base.layers.iter().map(|l| l.digest.0.to_hash()));
    }
}

/// What `recipes` pin, for every platform: kept by `gc` while the project is the current one.
pub fn pinned_by(store: &Store, recipes: &[Recipe]) -> Vec<Hash> {
    let mut hashes = Vec::new();
    for recipe in recipes {
        for source in &recipe.sources {
            source_blobs(store, recipe, source, &mut hashes);
        }
    }
    hashes
}

/// Registers the output at `out`: the blobs of `images`, and what they were built from (the
/// sources and base image of `def` for `platforms`), so `gc` keeps them while it exists.
pub fn register_output(
    store: &Store,
    out: &Path,
    def: &ImageDef,
    images: &[NodeImage],
    platforms: &[Platform],
) -> Result<()> {
    let mut hashes: Vec<Hash> = images.iter().flat_map(|i| i.output(&def.name).blobs).map(|d| d.to_hash()).collect();
    for platform in platforms {
        for recipe in def.recipes() {
            if let Some(source) = recipe.source_for(platform) {
                source_blobs(store, recipe, source, &mut hashes);
            }
        }
    }
    register_root(store, out, hashes)
}

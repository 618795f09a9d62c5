//! Garbage collection of the store, with Nix's rule: what a root reaches stays.
//!
//! Roots are the outputs imgbuild wrote, registered with [`Store::add_root`]; a root whose
//! output path no longer exists is dead. Every build holds the store's *build lock* shared for
//! its whole run and `gc` takes it exclusively, so a collection never runs while a build is
//! using blobs it has not yet registered. This module only collects.

use std::collections::BTreeSet;
use std::fs;

use crate::digest::{Hash, Sha256Digest};
use crate::error::{IoContext, Result};
use crate::image::BaseImage;
use crate::recipe::{Recipe, RecipeKind, Source};
use crate::store::Store;

#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct GcReport {
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
pub(crate) fn collect(store: &Store, pinned: &[Hash], dry_run: bool) -> Result<GcReport> {
    let _exclusive = store.build_lock_exclusive()?;
    let mut report = GcReport { pinned: pinned.len(), ..GcReport::default() };
    let mut keep: BTreeSet<String> = pinned.iter().map(|h| h.to_string()).collect();
    let mut dead = Vec::new();
    for (path, root) in store.roots()? {
        match root {
            Some(root) if root.output.exists() => {
                report.live_roots += 1;
                keep.extend(root.blobs);
            }
            _ => dead.push(path),
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
            // A killed run may leave a directory (an unpacked tree) as well as files.
            let removed = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            removed.at(&path)?;
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
        // Likewise a note that a base layer was checked, once its blob is gone.
        let checked = store.root().join("diff_ids");
        for entry in fs::read_dir(&checked).into_iter().flatten() {
            let path = entry.at(&checked)?.path();
            let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let live = format!("sha256:{name}").parse::<Sha256Digest>().is_ok_and(|d| store.has_sha256(&d));
            if !live {
                fs::remove_file(&path).at(&path)?;
            }
        }
    }
    Ok(report)
}

/// What one recipe source needs in the store: the source itself and, for a base image, its
/// config and layers (the manifest is the source).
pub(crate) fn source_blobs(store: &Store, recipe: &Recipe, source: &Source) -> Vec<Hash> {
    let mut hashes = vec![source.hash.clone()];
    if recipe.kind == RecipeKind::Tarball {
        return hashes;
    }
    if let Some(base) = source.hash.as_sha256().and_then(|d| BaseImage::load(store, &d).ok()) {
        hashes.push(base.config_digest.to_hash());
        hashes.extend(base.layers.iter().map(|l| l.digest.0.to_hash()));
    }
    hashes
}

/// What `recipes` pin, for every platform: kept by `gc` while the project is the current one.
pub(crate) fn pinned_by<'r>(store: &Store, recipes: impl IntoIterator<Item = &'r Recipe>) -> Vec<Hash> {
    recipes.into_iter().flat_map(|r| r.sources.iter().flat_map(move |s| source_blobs(store, r, s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gc_keeps_what_live_roots_and_pins_reach_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let [held, pinned, dead_only, loose] =
            ["held", "pin", "dead", "loose"].map(|b| store.add_bytes(b.as_bytes()).unwrap());
        let live_out = dir.path().join("live");
        fs::create_dir(&live_out).unwrap();
        store.add_root(&live_out, [held.to_hash()]).unwrap();
        store.add_root(&dir.path().join("gone"), [dead_only.to_hash()]).unwrap();
        let mut w = std::fs::File::create(store.temp_path("left")).unwrap();
        w.write_all(b"half").unwrap();
        let left_dir = store.temp_path("tree");
        fs::create_dir_all(left_dir.join("a/b")).unwrap();

        let dry = collect(&store, &[pinned.to_hash()], true).unwrap();
        assert_eq!((dry.removed_blobs, dry.kept_blobs, dry.live_roots, dry.dead_roots), (2, 2, 1, 1));
        assert_eq!(dry.removed_temp_files, 2);
        assert!(store.has_sha256(&loose), "a dry run removes nothing");

        let report = collect(&store, &[pinned.to_hash()], false).unwrap();
        assert_eq!((report.removed_blobs, report.removed_temp_files), (2, 2));
        assert!(!left_dir.exists(), "a directory left in tmp/ goes too");
        assert!(store.has_sha256(&held) && store.has_sha256(&pinned));
        assert!(!store.has_sha256(&dead_only) && !store.has_sha256(&loose));
        assert_eq!(store.roots().unwrap().len(), 1, "the dead root is gone");
    }
}

//! The files of two layers compared: each layer streamed once (never held whole), every entry
//! summarized (its content by hash), small text files kept for a diff. What one layer may make
//! this hold is bounded: entries, path bytes, kept text, and what it unpacks to
//! (`IMGBUILD_MAX_UNPACKED`, as the layer stage bounds a source).

use std::collections::BTreeMap;
use std::io;

use super::text::{as_text, unified, Unified};
use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::layer::tar_guard::{refusal, TarGuard};
use crate::store::Store;
use crate::supply::entries::{bad_layer, hashed_layer, summarize_with, EntrySummary};

/// Most entries of one layer compared (a Debian root holds ~20 000).
pub(crate) const MAX_ENTRIES: usize = 1_000_000;
/// Most path bytes of one layer held (as the layer stage's model of a tree, `MAX_MODEL_BYTES`).
const MAX_PATH_BYTES: usize = 64 << 20;
/// Largest file whose text is kept for a diff.
pub(crate) const MAX_TEXT_FILE: u64 = 256 << 10;
/// Most text bytes kept from one layer; past it, files are compared by hash only.
const MAX_TEXT_KEPT: usize = 16 << 20;
/// Most changed files listed per layer; the rest are counted.
pub(crate) const MAX_FILES_SHOWN: usize = 1000;

/// What the file system gets from one entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct FileFacts {
    pub kind: String,
    pub size: u64,
    /// Octal, as `ls` and `stat` show it.
    pub mode: String,
    pub owner: String,
    pub content: Option<Sha256Digest>,
    pub link: Option<String>,
}

impl From<&EntrySummary> for FileFacts {
    fn from(e: &EntrySummary) -> Self {
        FileFacts {
            kind: e.kind.clone(),
            size: e.size,
            mode: format!("{:04o}", e.mode & 0o7777),
            owner: format!("{}:{}", e.owner.0, e.owner.1),
            content: e.content,
            link: e.link.clone(),
        }
    }
}

/// One path that differs between two layers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct FileChange {
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    pub old: Option<FileFacts>,
    pub new: Option<FileFacts>,
    /// For a text file changed: its unified diff (bounded).
    pub diff: Option<Unified>,
}

/// The files that differ between two layers (either may be absent: a layer added or removed).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct FileChanges {
    pub files: Vec<FileChange>,
    /// Changes past `MAX_FILES_SHOWN`, counted only.
    pub more: usize,
}

struct Listed {
    facts: FileFacts,
    text: Option<String>,
}

/// Every entry of a layer by path (the last one of a path wins, as unpacking does).
fn list(store: &Store, digest: &Sha256Digest, max_unpacked: u64) -> Result<BTreeMap<String, Listed>> {
    let refused = |e: io::Error| layer_error(digest, e);
    let mut archive = tar::Archive::new(TarGuard::for_image_layer(hashed_layer(store, digest, max_unpacked)?));
    let (mut listed, mut path_bytes, mut kept) = (BTreeMap::new(), 0usize, 0usize);
    for (n, entry) in archive.entries().map_err(refused)?.enumerate() {
        if n == MAX_ENTRIES {
            return Err(bad_layer(digest, format!("more than {MAX_ENTRIES} entries: not compared")));
        }
        let mut entry = entry.map_err(refused)?;
        let small = entry.header().entry_type().is_file() && entry.size() <= MAX_TEXT_FILE;
        let mut data = Vec::new();
        let summary = summarize_with(&mut entry, |chunk| {
            if small {
                data.extend_from_slice(chunk);
            }
        })
        .map_err(refused)?;
        path_bytes += summary.path.len();
        if path_bytes > MAX_PATH_BYTES {
            return Err(bad_layer(digest, format!("more than {MAX_PATH_BYTES} bytes of paths: not compared")));
        }
        let text = as_text(&data).filter(|t| kept + t.len() <= MAX_TEXT_KEPT).map(str::to_string);
        kept += text.as_ref().map_or(0, String::len);
        listed.insert(summary.path.clone(), Listed { facts: FileFacts::from(&summary), text });
    }
    Ok(listed)
}

/// The files that differ between layer `old` and layer `new`, in path order.
pub(crate) fn compare(
    store: &Store,
    old: Option<&Sha256Digest>,
    new: Option<&Sha256Digest>,
    max_unpacked: u64,
) -> Result<FileChanges> {
    let listing = |d: Option<&Sha256Digest>| d.map_or(Ok(BTreeMap::new()), |d| list(store, d, max_unpacked));
    let (mut a, b) = (listing(old)?, listing(new)?);
    let mut changes = FileChanges::default();
    let mut push = |change: FileChange| {
        if changes.files.len() < MAX_FILES_SHOWN {
            changes.files.push(change);
        } else {
            changes.more += 1;
        }
    };
    for (path, n) in b {
        let change = match a.remove(&path) {
            None => FileChange { path, change: "added", old: None, new: Some(n.facts), diff: None },
            Some(o) if o.facts == n.facts => continue,
            Some(o) => {
                let diff = match (&o.text, &n.text) {
                    (Some(x), Some(y)) if o.facts.content != n.facts.content => Some(unified(&path, x, y)),
                    _ => None,
                };
                FileChange { path, change: "changed", old: Some(o.facts), new: Some(n.facts), diff }
            }
        };
        push(change);
    }
    for (path, o) in a {
        push(FileChange { path, change: "removed", old: Some(o.facts), new: None, diff: None });
    }
    changes.files.sort_by(|x, y| x.path.cmp(&y.path));
    Ok(changes)
}

/// An error reading a layer, as the layer's own.
pub(crate) fn layer_error(digest: &Sha256Digest, e: io::Error) -> Error {
    match refusal(&e) {
        Some(r) => r.to_error(&format!("layer {digest}")),
        None => bad_layer(digest, e.to_string()),
    }
}

//! Importing OCI images made by other tools (an OCI image layout directory or an oci-archive,
//! such as `skopeo copy docker://… oci-archive:F` writes) into the store. Every blob is
//! re-hashed on the way in; nothing enters the store under a digest it does not have.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::digest::{Algorithm, Sha256Digest};
use crate::error::{Error, IoContext, Result};
use crate::oci_doc::{Descriptor, Document};
use crate::store::{Store, MAX_DOCUMENT};

#[derive(Debug, Default, serde::Serialize)]
pub struct Imported {
    /// The layout's top-level entries: their tag (`org.opencontainers.image.ref.name`) and digest.
    pub tops: Vec<(Option<String>, Sha256Digest)>,
    /// Image manifests, with the platform the index gave them (when it did).
    pub manifests: Vec<(Sha256Digest, Option<String>)>,
    pub indexes: Vec<Sha256Digest>,
    pub blobs: usize,
    /// Artifact manifests the layout lists (OCI 1.1 referrers): not images, never a top.
    pub referrers: Vec<ImportedReferrer>,
}

/// An artifact manifest attached to a manifest or index (`subject`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportedReferrer {
    pub digest: Sha256Digest,
    pub artifact_type: String,
    pub subject: Sha256Digest,
}

/// Whether a file is a tar archive holding an OCI layout (an oci-archive).
pub fn is_oci_archive(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut archive = tar::Archive::new(file);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    // The layout's marker files are at the top; a few entries are enough to tell.
    for entry in entries.take(10_000) {
        let Ok(entry) = entry else { return false };
        let Ok(p) = entry.path() else { return false };
        let p = p.to_string_lossy().trim_start_matches("./").to_string();
        if p == "oci-layout" || p == "index.json" {
            return true;
        }
    }
    false
}

pub fn import(store: &Store, path: &Path) -> Result<Imported> {
    if path.is_dir() {
        import_layout(store, path)
    } else {
        import_archive(store, path)
    }
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::BadArchive { archive: path.display().to_string(), message: message.into() }
}

fn import_layout(store: &Store, dir: &Path) -> Result<Imported> {
    let index_path = dir.join("index.json");
    let text = read_limited(File::open(&index_path).at(&index_path)?, &index_path)?;
    let add = |digest: &Sha256Digest| -> Result<()> {
        if store.has_sha256(digest) {
            return Ok(());
        }
        let blob = dir.join("blobs/sha256").join(digest.hex());
        store.add_file(&blob, Algorithm::Sha256, Some(&digest.to_hash())).map(|_| ())
    };
    walk_index(store, dir, &text, &add)
}

fn import_archive(store: &Store, path: &Path) -> Result<Imported> {
    let file = File::open(path).at(path)?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut index = None;
    for entry in archive.entries().map_err(|e| bad(path, format!("not a tar archive: {e}")))? {
        let mut entry = entry.map_err(|e| bad(path, format!("corrupt tar: {e}")))?;
        let name =
            entry.path().map_err(|e| bad(path, e.to_string()))?.to_string_lossy().trim_start_matches("./").to_string();
        if name == "index.json" {
            index = Some(read_limited(&mut entry, path)?);
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            let digest: Sha256Digest =
                format!("sha256:{hex}").parse().map_err(|e| bad(path, format!("entry `{name}`: {e}")))?;
            if !store.has_sha256(&digest) {
                let mut w = store.writer(Algorithm::Sha256)?;
                io::copy(&mut entry, &mut w).map_err(|e| bad(path, format!("entry `{name}`: {e}")))?;
                w.commit(Some(&digest.to_hash()), &format!("{} entry {name}", path.display()))?;
            }
        }
    }
    let index = index.ok_or_else(|| bad(path, "no index.json: not an OCI archive"))?;
    let present = |digest: &Sha256Digest| -> Result<()> {
        if store.has_sha256(digest) {
            Ok(())
        } else {
            Err(bad(path, format!("blob {digest} is referenced but not in the archive")))
        }
    };
    walk_index(store, path, &index, &present)
}

fn read_limited(reader: impl Read, path: &Path) -> Result<String> {
    let mut text = String::new();
    reader.take(MAX_DOCUMENT + 1).read_to_string(&mut text).map_err(|e| bad(path, format!("index.json: {e}")))?;
    if text.len() as u64 > MAX_DOCUMENT {
        return Err(bad(path, "index.json is larger than 4 MiB"));
    }
    Ok(text)
}

fn walk_index(
    store: &Store,
    origin: &Path,
    index_text: &str,
    ensure: &dyn Fn(&Sha256Digest) -> Result<()>,
) -> Result<Imported> {
    let doc: Document = serde_json::from_str(index_text).map_err(|e| bad(origin, format!("index.json: {e}")))?;
    let mut imported = Imported::default();
    for desc in doc.manifests.unwrap_or_default() {
        if walk(store, origin, &desc, ensure, &mut imported, 0)? == Walked::Referrer {
            continue;
        }
        let tag = desc.annotations.as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name")).cloned();
        imported.tops.push((tag, desc.digest));
    }
    if imported.manifests.is_empty() {
        return Err(bad(origin, "holds no image manifest"));
    }
    Ok(imported)
}

/// What a walked descriptor was.
#[derive(PartialEq, Eq)]
enum Walked {
    Image,
    Referrer,
}

fn walk(
    store: &Store,
    origin: &Path,
    desc: &Descriptor,
    ensure: &dyn Fn(&Sha256Digest) -> Result<()>,
    out: &mut Imported,
    depth: u32,
) -> Result<Walked> {
    if depth > 4 {
        return Err(bad(origin, "indexes nested more than 4 deep"));
    }
    let digest = desc.digest;
    ensure(&digest)?;
    out.blobs += 1;
    let data = store.read_blob(&digest)?;
    let doc: Document = serde_json::from_slice(&data).map_err(|e| bad(origin, format!("{digest}: {e}")))?;
    if doc.is_index() {
        out.indexes.push(digest);
        for child in doc.manifests.iter().flatten() {
            walk(store, origin, child, ensure, out, depth + 1)?;
        }
        return Ok(Walked::Image);
    }
    if doc.config.is_none() {
        return Err(bad(origin, format!("{digest} is neither an image index nor an image manifest")));
    }
    for d in doc.blobs() {
        ensure(&d.digest)?;
        out.blobs += 1;
    }
    if let Some(subject) = &doc.subject {
        let artifact_type = doc.artifact_type.clone().or_else(|| doc.config.as_ref().map(|c| c.media_type.clone()));
        out.referrers.push(ImportedReferrer {
            digest,
            artifact_type: artifact_type.unwrap_or_default(),
            subject: subject.digest,
        });
        return Ok(Walked::Referrer);
    }
    out.manifests.push((digest, desc.platform.as_ref().map(|p| p.text())));
    Ok(Walked::Image)
}

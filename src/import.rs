//! Importing OCI images made by other tools (an OCI image layout directory or an oci-archive,
//! such as `skopeo copy docker://… oci-archive:F` writes) into the store. Every blob is
//! re-hashed on the way in; nothing enters the store under a digest it does not have. The
//! layout is hostile input: [`source`] reads only its regular files, each to its descriptor's
//! size and no further.

mod source;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::Path;

pub(crate) use source::OciSource;

use crate::digest::{Algorithm, Sha256Digest};
use crate::error::{Error, IoContext, Result};
use crate::oci_doc::{Descriptor, Document};
use crate::store::Store;

#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Imported {
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
pub(crate) struct ImportedReferrer {
    pub digest: Sha256Digest,
    pub artifact_type: String,
    pub subject: Sha256Digest,
}

/// Whether a file is a tar archive holding an OCI layout (an oci-archive).
pub(crate) fn is_oci_archive(path: &Path) -> bool {
    source::is_oci_archive(path)
}

/// Imports the OCI layout directory or oci-archive at `path`: every blob its `index.json`
/// leads to, each read as the regular file it must be, to its descriptor's size and no further,
/// and checked against its digest ([`OciSource`]).
pub(crate) fn import(store: &Store, path: &Path) -> Result<Imported> {
    let source = OciSource::open(path)?;
    let index = source.index()?;
    let doc: Document = serde_json::from_slice(&index).map_err(|e| bad(path, format!("index.json: {e}")))?;
    let mut imported = Imported::default();
    let mut seen = HashMap::new();
    for desc in doc.manifests.unwrap_or_default() {
        if walk(store, &source, &desc, &mut imported, &mut seen, 0)? == Walked::Referrer {
            continue;
        }
        let tag = desc.annotations.as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name")).cloned();
        imported.tops.push((tag, desc.digest));
    }
    if imported.manifests.is_empty() {
        return Err(bad(path, "holds no image manifest"));
    }
    Ok(imported)
}

/// The media types of an image's configuration (OCI's and Docker's).
pub(crate) const IMAGE_CONFIGS: [&str; 2] =
    ["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::BadArchive { archive: path.display().to_string(), message: message.into() }
}

/// The manifest or index `desc` names, from the store or else from the layout (then stored).
fn document(store: &Store, source: &OciSource, desc: &Descriptor) -> Result<Vec<u8>> {
    if store.has_sha256(&desc.digest) {
        return store.read_blob(&desc.digest);
    }
    let data = source.document(desc)?;
    store.add_bytes(&data)?;
    Ok(data)
}

/// Puts the config or layer `desc` names into the store, unless it is there.
fn blob(store: &Store, source: &OciSource, desc: &Descriptor) -> Result<()> {
    if store.has_sha256(&desc.digest) {
        return Ok(());
    }
    let mut reader = source.blob(desc)?;
    let mut writer = store.writer(Algorithm::Sha256)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(source.path(), e.to_string())),
        };
        writer.write_all(&buf[..n]).at(store.root())?;
    }
    writer.commit(Some(&desc.digest.to_hash()), &format!("{} blob {}", source.path().display(), desc.digest))?;
    Ok(())
}

/// What a walked descriptor was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walked {
    Image,
    Referrer,
}

/// Walks what `desc` leads to, each digest once (`seen`): an index may list one child many
/// times, and nested indexes that do so would otherwise multiply the work at every level.
fn walk(
    store: &Store,
    source: &OciSource,
    desc: &Descriptor,
    out: &mut Imported,
    seen: &mut HashMap<Sha256Digest, Walked>,
    depth: u32,
) -> Result<Walked> {
    let origin = source.path();
    if depth > 4 {
        return Err(bad(origin, "indexes nested more than 4 deep"));
    }
    let digest = desc.digest;
    if let Some(walked) = seen.get(&digest) {
        return Ok(*walked);
    }
    let data = document(store, source, desc)?;
    out.blobs += 1;
    let doc: Document = serde_json::from_slice(&data).map_err(|e| bad(origin, format!("{digest}: {e}")))?;
    if doc.is_index() {
        out.indexes.push(digest);
        for child in doc.manifests.iter().flatten() {
            walk(store, source, child, out, seen, depth + 1)?;
        }
        seen.insert(digest, Walked::Image);
        return Ok(Walked::Image);
    }
    if doc.config.is_none() {
        return Err(bad(origin, format!("{digest} is neither an image index nor an image manifest")));
    }
    for d in doc.blobs() {
        blob(store, source, d)?;
        out.blobs += 1;
    }
    // A manifest with a subject is a referrer when it carries an artifact (its `artifactType`,
    // or a config that is not an image's); an image manifest that names a subject is still an
    // image, and can be a base.
    let image_config = doc.config.as_ref().is_some_and(|c| IMAGE_CONFIGS.contains(&c.media_type.as_str()));
    if let Some(subject) = doc.subject.as_ref().filter(|_| doc.artifact_type.is_some() || !image_config) {
        let artifact_type = doc.artifact_type.clone().or_else(|| doc.config.as_ref().map(|c| c.media_type.clone()));
        out.referrers.push(ImportedReferrer {
            digest,
            artifact_type: artifact_type.unwrap_or_default(),
            subject: subject.digest,
        });
        seen.insert(digest, Walked::Referrer);
        return Ok(Walked::Referrer);
    }
    out.manifests.push((digest, desc.platform.as_ref().map(|p| p.text())));
    seen.insert(digest, Walked::Image);
    Ok(Walked::Image)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Writes `data` as a blob of the layout at `dir`; its descriptor.
    fn put(dir: &Path, data: &[u8], media_type: &str) -> serde_json::Value {
        let digest = Sha256Digest::of(data);
        std::fs::write(dir.join("blobs/sha256").join(digest.hex()), data).unwrap();
        json!({ "mediaType": media_type, "digest": digest.to_string(), "size": data.len() })
    }

    /// Issue 25: an index listing one child many times, nested, multiplied the work at every
    /// level (1000 × 1000 walks here). Each digest is walked once: five documents and blobs.
    #[test]
    fn nested_indexes_of_repeated_children_are_walked_once_each() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let config = put(dir.path(), b"{}", IMAGE_CONFIGS[0]);
        let layer = put(dir.path(), &[0u8; 1024], "application/vnd.oci.image.layer.v1.tar");
        let manifest = json!({ "schemaVersion": 2, "config": config, "layers": [layer] });
        let m = put(dir.path(), manifest.to_string().as_bytes(), "application/vnd.oci.image.manifest.v1+json");
        let index = |child: &serde_json::Value| {
            let doc = json!({ "schemaVersion": 2, "manifests": vec![child.clone(); 1000] });
            put(dir.path(), doc.to_string().as_bytes(), "application/vnd.oci.image.index.v1+json")
        };
        let inner = index(&m);
        let outer = index(&inner);
        let top = json!({ "schemaVersion": 2, "manifests": [outer.clone(), outer] });
        std::fs::write(dir.path().join("index.json"), top.to_string()).unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let imported = import(&store, dir.path()).unwrap();
        assert_eq!(imported.blobs, 5);
        assert_eq!(imported.manifests.len(), 1);
        assert_eq!(imported.indexes.len(), 2);
        assert_eq!(imported.tops.len(), 2, "each entry of index.json is still a top");
    }
}

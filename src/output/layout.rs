//! The OCI image layout directory: `oci-layout`, `index.json`, `blobs/sha256/…`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndexBuilder, MediaType};

use crate::atomic_file::{self, Options};
use crate::digest::Sha256Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{canonical_json, descriptor, Referrer, StoredImage};
use crate::store::Store;

pub(crate) const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The layout's top-level `index.json`: one entry per tag, in the order given, then (with
/// `with_referrers`) every image's referrers, untagged, each with its `artifactType`.
pub(crate) fn index_json(images: &[StoredImage], with_referrers: bool) -> Result<Vec<u8>> {
    let mut manifests: Vec<Descriptor> = images
        .iter()
        .map(|img| {
            let mut d = img.descriptor();
            let mut annotations: BTreeMap<String, String> =
                d.annotations().clone().unwrap_or_default().into_iter().collect();
            annotations.insert(REF_NAME.to_string(), img.tag.clone());
            d.set_annotations(Some(annotations.into_iter().collect()));
            d
        })
        .collect();
    if with_referrers {
        manifests.extend(images.iter().flat_map(|img| &img.referrers).map(referrer_descriptor));
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| Error::Internal(format!("building index.json: {e}")))?;
    Ok(canonical_json(&index))
}

/// How an index lists an artifact manifest: by its digest, with its `artifactType`.
fn referrer_descriptor(r: &Referrer) -> Descriptor {
    let mut d = descriptor(MediaType::ImageManifest, &r.digest, r.size);
    d.set_artifact_type(Some(MediaType::Other(r.artifact_type.clone())));
    d
}

/// Every blob of every image (and, with `with_referrers`, of their referrers), once, sorted.
pub(crate) fn all_blobs(images: &[StoredImage], with_referrers: bool) -> BTreeSet<Sha256Digest> {
    images.iter().flat_map(|img| img.blobs_of(with_referrers)).collect()
}

/// Writes the layout of `images` into the directory `dir` (a temporary path the caller renames
/// into place).
pub(crate) fn write(store: &Store, dir: &Path, images: &[StoredImage]) -> Result<()> {
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).at(&blob_dir)?;
    for digest in all_blobs(images, true) {
        let from = store.intact_path(&digest)?;
        let to = blob_dir.join(digest.hex());
        // Store blobs are immutable: a hard link costs nothing; copy across file systems.
        if fs::hard_link(&from, &to).is_err() {
            let mut blob = fs::File::open(&from).at(&from)?;
            atomic_file::write_with(&to, Options::REPLACE.mode(0o644), |out| {
                std::io::copy(&mut blob, out).map(drop).at(&to)
            })?;
        }
    }
    atomic_file::write(&dir.join("oci-layout"), OCI_LAYOUT, Options::REPLACE.mode(0o644))?;
    atomic_file::write(&dir.join("index.json"), &index_json(images, true)?, Options::REPLACE.mode(0o644))
}

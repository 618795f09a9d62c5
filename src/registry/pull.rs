//! Pulling an image from a registry into the store, checking every digest, so an image
//! definition can start from a base pinned by digest.

use std::io;

use super::client::Client;
use super::reference::Reference;
use crate::digest::{Algorithm, Hash, Sha256Digest};
use crate::error::{Error, Result};
use crate::import::Imported;
use crate::oci_doc::{Descriptor, DescriptorPlatform, Document};
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::store::Store;

/// Fetches a manifest, checks it against `expected` (when pinned) and stores it.
fn manifest(
    store: &Store,
    client: &Client,
    target: &str,
    expected: Option<&Sha256Digest>,
) -> Result<(Sha256Digest, Document)> {
    let (bytes, _) = client.get_manifest(target)?;
    let found = Sha256Digest::of(&bytes);
    if let Some(expected) = expected {
        if *expected != found {
            return Err(Error::HashMismatch {
                what: format!("{}/{}@{target}", client.registry(), client.repository()),
                expected: expected.to_hash(),
                found: found.to_hash(),
            });
        }
    }
    let doc: Document = serde_json::from_slice(&bytes).map_err(|e| Error::Registry {
        registry: client.registry().into(),
        message: format!("{target} is not an OCI manifest: {e}"),
    })?;
    store.add_bytes(&bytes)?;
    Ok((found, doc))
}

fn blob(store: &Store, client: &Client, desc: &Descriptor, reporter: &dyn Reporter) -> Result<()> {
    let hash: Hash = desc.digest.to_hash();
    if store.has(&hash) {
        return Ok(());
    }
    let task = reporter.task(&format!("pull {}", &desc.digest.hex()[..12]), Some(desc.size));
    let mut response = client.get_blob(&desc.digest)?;
    let mut writer = store.writer(Algorithm::Sha256)?;
    io::copy(&mut response, &mut writer).map_err(|e| Error::Registry {
        registry: client.registry().into(),
        message: format!("reading blob {}: {e}", desc.digest),
    })?;
    task.set_position(writer.size());
    writer.commit(Some(&hash), &format!("{}/{}@{}", client.registry(), client.repository(), desc.digest))?;
    Ok(())
}

/// Pulls `reference` into the store: an index and the manifests of `platforms` (all when
/// `None`), or a single manifest, with their configs and layers.
pub fn pull(
    store: &Store,
    client: &Client,
    reference: &Reference,
    platforms: Option<&[Platform]>,
    reporter: &dyn Reporter,
) -> Result<Imported> {
    let mut imported = Imported::default();
    let (digest, doc) = manifest(store, client, &reference.target(), reference.digest.as_ref())?;
    let mut images = Vec::new();
    match doc.manifests {
        Some(children) => {
            imported.indexes.push(digest);
            for child in children {
                let platform = child.platform.as_ref().map(DescriptorPlatform::text);
                let wanted = match (platforms, &platform) {
                    (None, _) => true,
                    (Some(list), Some(p)) => list.iter().any(|w| w.to_string() == *p),
                    (Some(_), None) => false,
                };
                if wanted {
                    let (d, doc) = manifest(store, client, &child.digest.to_string(), Some(&child.digest))?;
                    images.push((d, platform, doc));
                }
            }
            if images.is_empty() {
                return Err(Error::Usage(format!("{reference} has no manifest for the platforms asked for")));
            }
        }
        None => images.push((digest, None, doc)),
    }
    for (digest, platform, doc) in images {
        let config = doc.config.as_ref().ok_or_else(|| Error::Registry {
            registry: client.registry().into(),
            message: format!("{digest} is neither an image index nor an image manifest"),
        })?;
        for d in std::iter::once(config).chain(&doc.layers) {
            blob(store, client, d, reporter)?;
            imported.blobs += 1;
        }
        imported.manifests.push((digest, platform));
    }
    Ok(imported)
}

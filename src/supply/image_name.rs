//! Images named as skopeo names them (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
//! `docker://REF`), brought into the store with the referrers attached to them.

use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::Sha256Digest;
use crate::error::{escape, Error, Result};
use crate::import::ImportedReferrer;
use crate::oci_doc::Document;
use crate::progress::Reporter;
use crate::registry::{pull, referrers, Client, Reference};
use crate::store::Store;
use crate::supply::{CYCLONEDX_TYPE, IN_TOTO_TYPE, SPDX_TYPE};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImageName {
    /// An OCI layout directory and a tag in it.
    Layout { path: PathBuf, tag: Option<String> },
    /// An oci-archive (or an archive imgbuild wrote) and a tag in it.
    Archive { path: PathBuf, tag: Option<String> },
    /// An image in a registry.
    Registry(Reference),
}

impl FromStr for ImageName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let split = |rest: &str| -> Result<(PathBuf, Option<String>), String> {
            // As skopeo reads it: the path ends at the first `:`.
            let (path, tag) = match rest.split_once(':') {
                Some((p, t)) => (p, Some(t.to_string())),
                None => (rest, None),
            };
            if path.is_empty() || tag.as_deref() == Some("") {
                return Err(format!("`{}`: expected a path, then optionally `:TAG`", escape(text)));
            }
            Ok((PathBuf::from(path), tag))
        };
        if let Some(rest) = text.strip_prefix("oci:") {
            let (path, tag) = split(rest)?;
            Ok(ImageName::Layout { path, tag })
        } else if let Some(rest) = text.strip_prefix("oci-archive:") {
            let (path, tag) = split(rest)?;
            Ok(ImageName::Archive { path, tag })
        } else if let Some(rest) = text.strip_prefix("docker://") {
            Ok(ImageName::Registry(rest.parse()?))
        } else if let Err(refused) = crate::reference::refuse_userinfo(text) {
            Err(refused) // a user name and password, never repeated
        } else {
            Err(format!(
                "`{}` is not an image name: use oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://REGISTRY/REPO[:TAG]",
                escape(text)
            ))
        }
    }
}

/// An image whose every blob is in the store, and the artifact manifests attached to it.
pub(crate) struct OpenedImage {
    /// Its manifest or index.
    pub digest: Sha256Digest,
    /// Attached to it or to one of its platform manifests; their blobs are in the store too.
    pub referrers: Vec<ImportedReferrer>,
}

/// How much of a registry image to bring into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetch {
    /// Every blob (what `verify` compares).
    Whole,
    /// Its manifests and referrers only (what `sbom` reads).
    Documents,
}

/// Brings `name` into the store (a registry image needs `client`).
pub(crate) fn open(
    store: &Store,
    name: &ImageName,
    client: Option<&Client>,
    fetch: Fetch,
    reporter: &dyn Reporter,
) -> Result<OpenedImage> {
    match name {
        ImageName::Layout { path, tag } | ImageName::Archive { path, tag } => {
            let imported = crate::import::import(store, path)?;
            let digest = match (tag, imported.tops.as_slice()) {
                (Some(tag), tops) => tops.iter().find(|(t, _)| t.as_deref() == Some(tag)).map(|(_, d)| *d),
                (None, [(_, only)]) => Some(*only),
                (None, _) => None,
            };
            let digest = digest.ok_or_else(|| {
                let tags: Vec<String> = imported.tops.iter().filter_map(|(t, _)| t.clone()).collect();
                let what = tag.as_ref().map_or("choose a tag".to_string(), |t| format!("no tag `{}`", escape(t)));
                Error::Usage(format!("{}: {what} (it has: {})", path.display(), tags.join(", ")))
            })?;
            Ok(OpenedImage { digest, referrers: imported.referrers })
        }
        ImageName::Registry(reference) => {
            let client = client.ok_or_else(|| Error::Internal("a registry image without a client".into()))?;
            open_remote(store, client, reference, fetch, reporter)
        }
    }
}

fn open_remote(
    store: &Store,
    client: &Client,
    reference: &Reference,
    fetch: Fetch,
    reporter: &dyn Reporter,
) -> Result<OpenedImage> {
    let (digest, doc) = pull::manifest(store, client, &reference.target(), reference.digest.as_ref())?;
    // Each child once: an index may list one many times.
    let mut seen = std::collections::HashSet::from([digest]);
    let children = doc.manifests.iter().flatten().map(|c| c.digest).filter(|d| seen.insert(*d));
    let subjects: Vec<Sha256Digest> = std::iter::once(digest).chain(children).collect();
    match fetch {
        Fetch::Whole => {
            let pinned = Reference { digest: Some(digest), tag: None, ..reference.clone() };
            pull::pull(store, client, &pinned, None, reporter)?;
        }
        Fetch::Documents => {
            for child in &subjects[1..] {
                pull::manifest(store, client, &child.to_string(), Some(child))?;
            }
        }
    }
    let mut found = Vec::new();
    for subject in subjects {
        for listed in referrers::list(client, &subject)? {
            // Only imgbuild's documents are read (by `sbom` and `verify`): others are never fetched.
            if listed.artifact_type.as_deref().is_some_and(is_ours) {
                found.extend(attached(store, client, &listed.digest, subject)?);
            }
        }
    }
    Ok(OpenedImage { digest, referrers: found })
}

fn is_ours(artifact_type: &str) -> bool {
    [SPDX_TYPE, CYCLONEDX_TYPE, IN_TOTO_TYPE].contains(&artifact_type)
}

/// The artifact manifest `artifact` and its one document, when it is one of imgbuild's
/// attached to `subject`: what the registry lists is a hint, only the manifest counts. Its
/// blobs are documents, never an image's layers: each at most MAX_DOCUMENT bytes.
fn attached(
    store: &Store,
    client: &Client,
    artifact: &Sha256Digest,
    subject: Sha256Digest,
) -> Result<Option<ImportedReferrer>> {
    let (_, doc) = pull::manifest(store, client, &artifact.to_string(), Some(artifact))?;
    let artifact_type = doc.artifact_type.clone().unwrap_or_default();
    if doc.subject.as_ref().map(|s| s.digest) != Some(subject) || !is_ours(&artifact_type) {
        return Ok(None);
    }
    let what = format!("the {artifact_type} document {artifact} attached to {subject}");
    let [layer] = doc.layers.as_slice() else {
        return Err(client.error(format!("{what} carries {} blobs, not one", doc.layers.len())));
    };
    for desc in doc.config.iter().chain([layer]) {
        pull::document(store, client, desc, &what)?;
    }
    Ok(Some(ImportedReferrer { digest: *artifact, artifact_type, subject }))
}

/// A manifest or index of the store, read permissively.
pub(crate) fn read_document(store: &Store, digest: &Sha256Digest) -> Result<Document> {
    let bytes = store.read_blob(digest)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Store {
        path: store.sha256_path(digest),
        message: format!("not an OCI manifest or index: {e}"),
    })
}

/// The manifests an image's referrers may be attached to: the image's own and, for an index,
/// each of its manifests.
pub(crate) fn subjects(store: &Store, top: &Sha256Digest) -> Result<Vec<Sha256Digest>> {
    let doc = read_document(store, top)?;
    let mut all = vec![*top];
    all.extend(doc.manifests.iter().flatten().map(|d| d.digest));
    Ok(all)
}

/// Of `referrers`, those attached to the image `top` (or its platform manifests), by digest.
pub(crate) fn referrers_of(
    store: &Store,
    top: &Sha256Digest,
    referrers: &[ImportedReferrer],
) -> Result<Vec<Sha256Digest>> {
    let subjects = subjects(store, top)?;
    Ok(referrers.iter().filter(|r| subjects.contains(&r.subject)).map(|r| r.digest).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_skopeo_reads_them() {
        let layout: ImageName = "oci:out/zk-kafka:node-1".parse().unwrap();
        assert_eq!(layout, ImageName::Layout { path: "out/zk-kafka".into(), tag: Some("node-1".into()) });
        let archive: ImageName = "oci-archive:out/zk.tar".parse().unwrap();
        assert_eq!(archive, ImageName::Archive { path: "out/zk.tar".into(), tag: None });
        let remote: ImageName = "docker://127.0.0.1:5000/team/zk:node-0".parse().unwrap();
        assert!(matches!(remote, ImageName::Registry(r) if r.tag.as_deref() == Some("node-0")));
        for bad in ["out/zk-kafka", "oci:", "oci:dir:", "docker://Bad Name", "dir:x"] {
            assert!(bad.parse::<ImageName>().is_err(), "{bad}");
        }
        for secret in ["docker://ci:PW-1@127.0.0.1:5443/team/t", "ci:PW-1@127.0.0.1:5443/team/t"] {
            let err = secret.parse::<ImageName>().unwrap_err();
            assert!(!err.contains("PW-1") && err.contains("--password-stdin"), "{err}");
        }
    }
}
